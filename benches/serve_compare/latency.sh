#!/usr/bin/env bash
# taper serve at f32 against int8, alternated, ROUNDS times (docs/benchmarks.md, "Serving"):
# one client for SECS seconds (single-sentence latency over HTTP) and, with MANY=1, 16 clients
# for 15 s (throughput), each sentence a line of the quickstart's test split.
#
#   cargo build --release && cargo run --release -- run pipelines/quickstart.yaml
#   benches/serve_compare/latency.sh [ROUNDS]
# Env: TAPER (binary), SECS (8), MANY, WAIT (--max-wait-ms, 0), PORT (18090).
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=pipelines/out/quickstart/deploy
input=pipelines/out/quickstart/data/test.jsonl
taper=${TAPER:-${CARGO_TARGET_DIR:-target}/release/taper}
port=${PORT:-18090}
rounds=${1:-2}
cargo bench --profile dev --bench serve_load --no-run 2>/dev/null
load() { cargo bench --profile dev --bench serve_load -- --url "127.0.0.1:$port" --input "$input" "$@" 2>/dev/null; }
for round in $(seq "$rounds"); do
  for precision in f32 int8; do
    echo "## round $round $precision, load $(cut -d' ' -f1-3 /proc/loadavg)"
    RAYON_NUM_THREADS=2 "$taper" serve "$bundle" --port "$port" --precision "$precision" \
      --max-wait-ms "${WAIT:-0}" 2>/dev/null &
    server=$!
    until curl -sf "127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
    curl -sf "127.0.0.1:$port/predict" -H 'content-type: application/json' \
      -d '{"inputs": "warm-up"}' >/dev/null
    load --clients 1 --seconds "${SECS:-8}" | tail -1
    if [ -n "${MANY:-}" ]; then load --clients 16 --seconds 15 | tail -1; fi
    kill -TERM "$server"
    wait "$server" || true
  done
done
