#!/usr/bin/env bash
# `taper serve` against a PyTorch + transformers baseline, side by side on the same cores
# (issue 10; figures in docs/benchmarks.md, "Serving"). Per round, alternating the two sides:
#   1. a release `taper serve BUNDLE` on loopback, loaded by benches/serve_load.rs with 16
#      keep-alive clients for 30 s (one test sentence per `POST /predict`), then 1 client for
#      10 s (single-sentence latency over HTTP); the mean batch size from `/metrics`;
#   2. benches/serve_compare/torch_baseline.py: the same bundle in transformers, the same
#      sentences in file order at batch 32 with dynamic padding, 30 s, f32 and then
#      `quantize_dynamic` int8.
# The load average is printed before each side: the machine is shared.
#
#   cargo build --release
#   benches/serve_compare/run.sh BUNDLE TEST.jsonl [ROUNDS]
# with TORCH_PYTHON a python that has torch and transformers (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=$1
input=$2
rounds=${3:-2}
threads=${THREADS:-2}
target=${CARGO_TARGET_DIR:-target}
taper=${TAPER:-$target/release/taper}
python=${TORCH_PYTHON:-python3}
port=${PORT:-18080}
cargo bench --profile dev --bench serve_load --no-run 2>/dev/null
load() { cargo bench --profile dev --bench serve_load -- --url "127.0.0.1:$port" --input "$input" "$@" 2>/dev/null; }
for round in $(seq "$rounds"); do
  echo "## round $round"
  echo "load before taper: $(cut -d' ' -f1-3 /proc/loadavg)"
  RAYON_NUM_THREADS=$threads "$taper" serve "$bundle" --port "$port" 2>/dev/null &
  server=$!
  until curl -sf "127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
  curl -sf "127.0.0.1:$port/predict" -H 'content-type: application/json' \
    -d '{"inputs": "warm-up"}' >/dev/null
  load --clients 16 --seconds 30
  load --clients 1 --seconds 10 | tail -1
  curl -sf "127.0.0.1:$port/metrics" | grep -E '^taper_batch_size_(sum|count)'
  kill -TERM "$server"
  wait "$server" || true
  echo "load before torch: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$python" benches/serve_compare/torch_baseline.py --bundle "$bundle" --input "$input" \
    --threads "$threads" --seconds 30 2>/dev/null
  "$python" benches/serve_compare/torch_baseline.py --bundle "$bundle" --input "$input" \
    --threads "$threads" --seconds 30 --int8 2>/dev/null
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
