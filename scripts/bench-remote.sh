#!/usr/bin/env bash
# Push/pull throughput of the remote cache (docs/benchmarks.md, "Remote cache"): a store shaped
# like the quickstart's (the MiniLM checkpoint, its tokenizer, a few small outputs) is pushed
# to and pulled from (a) a local SeaweedFS S3 (`weed mini`) and (b) a directory remote, and
# compared with the disk's own copy rate (`cp -r` of the same blobs, then synced).
# Usage: TAPER_MINILM_DIR=…/minilm/model scripts/bench-remote.sh [path/to/taper]
set -euo pipefail
taper=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/taper}")
model=${TAPER_MINILM_DIR:?set TAPER_MINILM_DIR to the MiniLM model directory}
work=$(mktemp -d)
weed_pid=
# SIGKILL: `weed mini` can take seconds to stop on SIGTERM (or not stop while a component is
# still starting), and the next run needs its ports.
trap '[ -z "$weed_pid" ] || { kill -KILL $weed_pid; wait $weed_pid; } 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/a" && cd "$work/a"
cp -r "$model" model
cat > p.yaml <<YAML
version: 1
name: bench
stages:
  checkpoint:
    kind: command
    run: mkdir -p ckpt && cp -r model/. ckpt/
    deps: [model]
    outs: [ckpt]
  metrics:
    kind: command
    run: ls -l ckpt > metrics.txt
    deps: [ckpt]
    outs: [metrics.txt]
YAML
"$taper" run p.yaml -q
size=$(du -sb cache/blobs-v1 | cut -f1)
objects=$(find cache/blobs-v1 cache/manifests-v1 cache/actions-v1 -type f | wc -l)
echo "store: $objects objects, $((size / 1048576)) MiB of blobs"

seconds() { local start=$(date +%s.%N); "$@" >"$work/last.log" 2>&1 || { echo "failed: $*" >&2; cat "$work/last.log" >&2; return 1; }; echo "$(date +%s.%N) - $start" | bc; }
rate() { echo "scale=1; $size / 1048576 / $1" | bc; }

sync; t=$(seconds sh -c "cp -r cache/blobs-v1 $work/copy && sync"); echo "disk copy (cp -r + sync): ${t}s, $(rate "$t") MiB/s"

t=$(seconds "$taper" cache push --remote "$work/dir-remote"); echo "push to directory: ${t}s, $(rate "$t") MiB/s"
mkdir -p "$work/b" && cp p.yaml "$work/b/"
t=$(seconds sh -c "cd $work/b && $taper cache pull --remote $work/dir-remote"); echo "pull from directory: ${t}s, $(rate "$t") MiB/s"

if command -v weed >/dev/null; then
  echo '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List"]}]}' > "$work/s3.json"
  weed mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket=bench -s3.port=18433 -master.port=19433 \
    -volume.port=19440 -filer.port=18988 -admin.port=23746 -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false \
    -admin.ui=false -s3.config="$work/s3.json" >"$work/weed.log" 2>&1 &
  weed_pid=$!
  up=
  for _ in $(seq 150); do
    # Up: S3 refuses an anonymous request (403) and the bucket exists.
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18433/bench/)" = 403 ] \
      && curl -sf http://127.0.0.1:18988/buckets/bench/ -o /dev/null && { up=1; break; }
    sleep 0.2
  done
  [ -n "$up" ] || { echo "weed mini did not start:" >&2; tail -5 "$work/weed.log" >&2; exit 1; }
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_ENDPOINT_URL=http://127.0.0.1:18433
  t=$(seconds "$taper" cache push --remote s3://bench/q); echo "push to S3 (weed mini): ${t}s, $(rate "$t") MiB/s"
  mkdir -p "$work/c" && cp p.yaml "$work/c/"
  t=$(seconds sh -c "cd $work/c && $taper cache pull --remote s3://bench/q"); echo "pull from S3 (weed mini): ${t}s, $(rate "$t") MiB/s"
  t=$(seconds "$taper" cache push --remote s3://bench/q); echo "push again (nothing missing): ${t}s"
fi
