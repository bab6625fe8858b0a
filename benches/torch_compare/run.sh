#!/usr/bin/env bash
# Side-by-side: PyTorch + transformers + peft vs taper's ML core on the same CPU, same shapes,
# in one run. NOT part of CI: it installs about 5.6 GB of wheels (torch with its CUDA
# dependencies) into a virtual environment under target/ (about 70 s on this machine).
#
#   RAYON_NUM_THREADS=2 benches/torch_compare/run.sh          # both sides, then ratios
#   THREADS=1 benches/torch_compare/run.sh                     # single-threaded
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-${RAYON_NUM_THREADS:-2}}
venv=${TORCH_VENV:-$PWD/target/torch-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch transformers peft safetensors
fi
out=$(mktemp -d)
RAYON_NUM_THREADS=$threads cargo bench --bench ml_step -- --json "$out/taper.json"
OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads "$venv/bin/python" \
  benches/torch_compare/torch_side.py --threads "$threads" --json "$out/torch.json"
python3 benches/torch_compare/ratios.py "$out/taper.json" "$out/torch.json"
