#!/usr/bin/env bash
# Build the GPU latency lookup tables of resnet50 and mobilenetv3 on this machine's CUDA device
# and write them into predictors/data/lut/, from where `nas search --hw gpu` uses them on
# machines without a GPU. Needs only Python >= 3.11 and torch >= 2.4 (no pip install: the
# source tree is made importable as the `nas` package through a temporary folder of links).
#
#   bash bench/profile_gpu.sh            # then commit predictors/data/lut/*.json.gz
#
# About 2-4 minutes on a recent GPU (each distinct block: 10 warm-ups + 30 timed runs, CUDA
# events). Extra arguments go to `python -m nas.predictors.build_tables` (e.g. --batch-size 32).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/nas"
: > "$TMP/nas/__init__.py"
for part in search supernets predictors compress cli; do
  ln -s "$ROOT/$part" "$TMP/nas/$part"
done
"$PY" - <<'PY'
import sys
import torch
assert sys.version_info >= (3, 11), "Python >= 3.11 needed"
assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4), "torch >= 2.4 needed"
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY
mkdir -p "$ROOT/predictors/data/lut"
PYTHONPATH="$TMP" timeout 360 "$PY" -m nas.predictors.build_tables \
  --device cuda --out "$ROOT/predictors/data/lut" "$@" | tee "$ROOT/bench/results/profile_gpu.json"
