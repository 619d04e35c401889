#!/usr/bin/env bash
# One device run of the cached-gradient benchmark (ViT-H/14 + LoRA r=64, bf16, checkpointing on):
# plain batch 256 vs cached batch 1024 and 4096 at M = 128 and 256. Same setup as gpu_run.sh
# (.whl/ carried, see benchmarks/README.md). Usage on the device:  bash benchmarks/gpu_cached_run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu_cached.log"
PYTHONUNBUFFERED=1 timeout "${GPU_RUN_TIMEOUT:-560}" python3 benchmarks/gpu_cached_batch.py --budget_s 480 \
  --out "$OUT/gpu_cached.json" "$@" 2>&1 | tee -a "$OUT/gpu_cached.log"
