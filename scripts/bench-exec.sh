#!/usr/bin/env bash
# Benchmarks of `taper run` / `taper plan` through the real binary (issue 3):
#   1. a no-op `taper run` of a pipeline that reads a 1 GiB file, hash cache warm;
#   2. `taper plan` of a 1,000-stage pipeline, all stages cached.
# Usage: scripts/bench-exec.sh [path/to/taper]   (default: target/release/taper)
# Prints the median of 10 runs of each. The 1 GiB file is generated under ${TMPDIR:-/tmp} and
# removed at the end; nothing is written into the repository.
set -euo pipefail
taper="$(realpath "${1:-target/release/taper}")"
work="$(mktemp -d "${TMPDIR:-/tmp}/taper-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT

median_ms() { # command... ; runs it 10 times, prints the median wall time in ms
  local times=()
  for _ in $(seq 10); do
    local start end
    start=$(date +%s%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", (a[5]+a[6])/2/1000}'
}

# 1. no-op run over a 1 GiB file
mkdir -p "$work/big"
cd "$work/big"
head -c $((1024 * 1024 * 1024)) /dev/urandom > big.bin
touch -d '1 minute ago' big.bin
cat > p.yaml <<'YAML'
version: 1
name: big
stages:
  size:
    kind: command
    run: wc -c < big.bin > size.txt
    deps: [big.bin]
    outs: [size.txt]
YAML
start=$(date +%s%N); "$taper" run p.yaml > /dev/null 2>&1; end=$(date +%s%N)
echo "first run (hashes 1 GiB, runs wc): $(( (end - start) / 1000000 )) ms"
sleep 3   # outputs leave the racy-mtime window, so the hash cache may trust them
"$taper" run p.yaml > /dev/null 2>&1
echo "no-op taper run, 1 GiB dep, warm hash cache: $(median_ms "$taper" run p.yaml) ms (median of 10)"

# 2. plan of 1,000 stages (10 chains of 100, each stage reads its predecessor's out)
mkdir -p "$work/wide"
cd "$work/wide"
echo 0 > seed.txt
{
  echo "version: 1"
  echo "name: wide"
  echo "stages:"
  for chain in $(seq 0 9); do
    for step in $(seq 0 99); do
      if [ "$step" = 0 ]; then dep=seed.txt; else dep="c$chain/s$((step - 1)).txt"; fi
      echo "  c${chain}_s${step}:"
      echo "    kind: command"
      echo "    run: mkdir -p c$chain && echo $step > c$chain/s$step.txt"
      echo "    deps: [$dep]"
      echo "    outs: [c$chain/s$step.txt]"
    done
  done
} > p.yaml
start=$(date +%s%N); "$taper" run p.yaml -j 2 > /dev/null 2>&1; end=$(date +%s%N)
echo "first run of 1,000 stages: $(( (end - start) / 1000000 )) ms"
sleep 3
"$taper" plan p.yaml > /dev/null 2>&1
echo "taper plan, 1,000 stages all cached: $(median_ms "$taper" plan p.yaml) ms (median of 10)"
echo "taper validate, same file (YAML load alone): $(median_ms "$taper" validate p.yaml) ms (median of 10)"
