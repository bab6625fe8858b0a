#!/usr/bin/env bash
# Pipeline files at scale, through the real binary: wall time and peak memory (max RSS from
# `/usr/bin/time -v`) of `taper validate` / `taper dag` on generated inputs, against the
# targets of issue 9: 50,000 stages with one error each under 2 s, a 50,000-stage cycle and
# `dag` of a 50,000-stage chain fast, and peak memory at most 16x the file size + 64 MB.
#
# Usage: benches/validate_scale.sh [TAPER...]   (default: target/release/taper)
# With several binaries (e.g. a build of an older commit), each input is run with each binary
# in turn, for ROUNDS rounds (default 2), alternating, so machine load hits them alike.
# A run is stopped after LIMIT seconds (default 60) and shown as `>LIMIT s`.
# Inputs are generated under ${TMPDIR:-/tmp} and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- target/release/taper
binaries=()
for binary in "$@"; do binaries+=("$(realpath "$binary")"); done
work="$(mktemp -d "${TMPDIR:-/tmp}/taper-scale-XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import os, sys
work = sys.argv[1]
def write(name, lines):
    with open(os.path.join(work, name), "w") as f:
        f.write("\n".join(lines) + "\n")
head = ["version: 1", "name: scale", "stages:"]
n = 50_000
write("errors-50000.yaml", head + [f"  s{i}: {{ kind: command, run: echo, bogus: {i} }}" for i in range(n)])
write("cycle-50000.yaml", head + [f"  s{i}: {{ kind: command, run: echo, deps: [d{(i + 1) % n}], outs: [d{i}] }}" for i in range(n)])
write("chain-50000.yaml", head + ["  s0: { kind: command, run: echo, outs: [d0] }"]
      + [f"  s{i}: {{ kind: command, run: echo, deps: [d{i - 1}], outs: [d{i}] }}" for i in range(1, n)])
write("param-bomb.yaml", ["version: 1", "name: bomb", "params:", "  big: " + "b" * 200_000, "stages:"]
      + [f'  s{i}: {{ kind: command, run: "${{params.big}}" }}' for i in range(6000)])
write("param-doubling.yaml", ["version: 1", "name: laughs", "params:", "  p0: abcdefghijklmnop"]
      + [f'  p{i}: "${{params.p{i - 1}}}${{params.p{i - 1}}}"' for i in range(1, 41)]
      + ["stages:", '  s: { kind: command, run: "echo ${params.p40}" }'])
write("long-line.yaml", head + ["  a: { kind: command, run: echo " + "x" * 1_000_000 + ", bogus: 1 }"])
# The densest file under the 8 MiB limit: 4 million one-character list items.
items = 4_000_000
write("dense-8mib.yaml", head + ["  a: { kind: command, run: echo, deps: [" + ",".join("a" * items) + "] }"])
write("errors-8mib.yaml", head + [f"  s{i}: {{ kind: command, run: echo, bogus: {i} }}" for i in range(150_000)])
PY

run() { # binary file args... ; prints "seconds max_rss_kb exit"
  local binary=$1 file=$2; shift 2
  local log="$work/time.log" status=0
  timeout "${LIMIT:-60}" /usr/bin/time -v -o "$log" "$binary" "$@" "$file" > /dev/null 2>&1 || status=$?
  if [ "$status" = 124 ]; then echo ">${LIMIT:-60} - timeout"; return; fi
  awk -v status="$status" '/Elapsed \(wall clock\)/ {n = split($NF, t, ":"); s = t[n] + (n > 1 ? t[n-1] * 60 : 0)}
       /Maximum resident/ {rss = $NF} END {printf "%.2f %d %d\n", s, rss, status}' "$log"
}

printf '%-20s %-9s %9s %-28s %9s %9s %6s\n' input command "size KB" binary "wall s" "RSS MB" "bound"
for round in $(seq "${ROUNDS:-2}"); do
  for case in errors-50000:validate cycle-50000:validate chain-50000:dag chain-50000:validate \
              param-bomb:validate param-doubling:validate long-line:validate \
              dense-8mib:validate errors-8mib:validate; do
    file="$work/${case%%:*}.yaml"
    size_kb=$(( $(stat -c %s "$file") / 1024 ))
    bound_mb=$(( size_kb * 16 / 1024 + 64 ))
    for binary in "${binaries[@]}"; do
      read -r seconds rss status < <(run "$binary" "$file" "${case##*:}")
      rss_mb=$([ "$rss" = - ] && echo - || echo $(( rss / 1024 )))
      printf '%-20s %-9s %9d %-28s %9s %9s %6s  (round %d, exit %s, load %s)\n' \
        "${case%%:*}" "${case##*:}" "$size_kb" "${binary#"$PWD"/}" \
        "$seconds" "$rss_mb" "$bound_mb" "$round" "$status" "$(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
