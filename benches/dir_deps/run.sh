#!/usr/bin/env bash
# No-op `taper run` against no-op `dvc repro` over a `command` stage whose dep is a directory of
# 10,000 small files (docs/benchmarks.md, "Execution and cache").
#
# Usage: benches/dir_deps/run.sh [TAPER] [OTHER_TAPER]
#   TAPER        the binary measured (default target/release/taper)
#   OTHER_TAPER  optional second taper binary timed in the same rounds (e.g. a build of the
#                previous commit), for a before/after figure
# Environment: DVC (default .venv-bench/bin/dvc; `python3 -m venv .venv-bench &&
#   .venv-bench/bin/pip install dvc`), ROUNDS (default 3), LAUNCHES per round (default 10),
#   FILES (default 10000).
#
# Each round times LAUNCHES no-op launches of every tool, tools alternated (and their order
# reversed every other round, so neither always runs right after the other), and prints each
# tool's median; the last line is the range of DVC / taper ratios over the rounds. Everything is
# generated under ${TMPDIR:-/tmp} and removed at the end; nothing is written into the repository.
set -euo pipefail
if [ -z "${EPOCHREALTIME:-}" ]; then
  echo "benches/dir_deps/run.sh needs bash 5 or later (\$EPOCHREALTIME)" >&2
  exit 2
fi
taper="$(realpath "${1:-target/release/taper}")"
other="${2:+$(realpath "$2")}"
dvc="$(realpath "${DVC:-.venv-bench/bin/dvc}")"
rounds="${ROUNDS:-3}"
launches="${LAUNCHES:-10}"
files="${FILES:-10000}"
work="$(mktemp -d "${TMPDIR:-/tmp}/taper-dir-deps-XXXXXX")"
trap 'rm -rf "$work"' EXIT

median_ms() { # dir command... ; runs it $launches times in dir, prints the median wall time in ms
  # Timed with bash's own clock ($EPOCHREALTIME, microseconds) around a plain launch: timing
  # with `date` added two process starts (1-2 ms) to every figure, which hid most of a
  # ~10 ms tool's time in the harness.
  local dir="$1" times=() start end
  shift
  pushd "$dir" > /dev/null
  for _ in $(seq "$launches"); do
    start=$EPOCHREALTIME
    "$@" > /dev/null 2>&1
    end=$EPOCHREALTIME
    times+=($(( ${end/[.,]/} - ${start/[.,]/} )))
  done
  popd > /dev/null
  printf '%s\n' "${times[@]}" | sort -n |
    awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'
}

# One project per tool, each with its own copy of the data (DVC and taper each keep a cache).
make_project() { # dir
  mkdir -p "$1/data"
  (cd "$1/data" && seq -w 1 "$files" | while read -r n; do echo "row $n" > "f$n.txt"; done)
}

make_project "$work/taper"
cat > "$work/taper/p.yaml" <<'YAML'
version: 1
name: dirdeps
stages:
  count:
    kind: command
    run: ls data | wc -l > count.txt
    deps: [data]
    outs: [count.txt]
YAML
if [ -n "$other" ]; then
  cp -r "$work/taper" "$work/other"
fi
make_project "$work/dvc"
cat > "$work/dvc/dvc.yaml" <<'YAML'
stages:
  count:
    cmd: ls data | wc -l > count.txt
    deps: [data]
    outs: [count.txt]
YAML
(cd "$work/dvc" && "$dvc" init --no-scm -q && "$dvc" config core.analytics false)

# First runs (hash everything, run the command), then wait out the racy-timestamp window and
# run once more so both tools record their stat caches; what is timed next is the no-op path.
(cd "$work/taper" && "$taper" run p.yaml > /dev/null)
[ -z "$other" ] || (cd "$work/other" && "$other" run p.yaml > /dev/null)
(cd "$work/dvc" && "$dvc" repro -q > /dev/null)
sleep 3
(cd "$work/taper" && "$taper" run p.yaml > /dev/null)
[ -z "$other" ] || (cd "$work/other" && "$other" run p.yaml > /dev/null)
(cd "$work/dvc" && "$dvc" repro -q > /dev/null)

echo "no-op run over a $files-file dep directory, median of $launches launches per round; load: $(cut -d' ' -f1-3 /proc/loadavg)"
ratios=()
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    t=$(median_ms "$work/taper" "$taper" run p.yaml)
    [ -z "$other" ] || o=$(median_ms "$work/other" "$other" run p.yaml)
    d=$(median_ms "$work/dvc" "$dvc" repro)
  else
    d=$(median_ms "$work/dvc" "$dvc" repro)
    [ -z "$other" ] || o=$(median_ms "$work/other" "$other" run p.yaml)
    t=$(median_ms "$work/taper" "$taper" run p.yaml)
  fi
  ratio=$(awk -v d="$d" -v t="$t" 'BEGIN {printf "%.1f", d / t}')
  ratios+=("$ratio")
  line="round $round: taper $t ms, dvc repro $d ms (dvc/taper ${ratio}x)"
  [ -z "$other" ] || line="$line, other taper $o ms (other/taper $(awk -v o="$o" -v t="$t" 'BEGIN {printf "%.1f", o / t}')x)"
  echo "$line; load $(cut -d' ' -f1 /proc/loadavg)"
done
printf '%s\n' "${ratios[@]}" | sort -n |
  awk '{a[NR]=$1} END {printf "dvc repro / taper run: %sx to %sx over %d rounds\n", a[1], a[NR], NR}'
