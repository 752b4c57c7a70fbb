#!/usr/bin/env bash
# Issue 13 item 6: the GPU figures, as one short script for a session lent a GPU machine
# (the `device` tool: `run` with this command; a few minutes of device time).
#
#   1. forward pass of the paper's 32-filter SegResNetVAE and the 16-filter SegResNet,
#      full and brain-cropped volumes, with and without the 8-flip TTA (bench/inference.py);
#      the paper: 0.4 s per volume on a V100;
#   2. the node's inference path on the GPU with the default model segnode-brats22-v1
#      (predict_regions: 2 mm grid, ensemble, batched TTA), as the infer step runs it.
#
# Needs torch with CUDA, MONAI and segnode importable (PYTHONPATH=. and the pinned wheels
# carried to the machine, see the device tool's README). Figures go to $OUT/gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-.}"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" bench/inference.py --device cuda
    "$PY" bench/inference.py --device cuda --model segnode-brats22-v1
} 2>&1 | tee "$OUT/gpu.txt"
