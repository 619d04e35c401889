#!/usr/bin/env bash
# One short device run of the ViT-H/14 LoRA throughput benchmark (well under 8 minutes).
# The device has torch/transformers/peft/accelerate but not datasets/evaluate: the wheels in
# .whl/ (downloaded beforehand, see benchmarks/README.md) are installed into /tmp/site first.
# Usage (repository root, on the device):  bash benchmarks/gpu_run.sh   -> $OUT/gpu.json, $OUT/gpu.log
# GPU_RUN_TIMEOUT (seconds, default 470) caps the whole script: raise it, with --budget_s, for a run
# whose compilation takes minutes (--compile_mode max-autotune-no-cudagraphs), within the device's
# per-command limit.
set -euo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv | tee "$OUT/gpu.log"
{ nproc; df -h /dev/shm; } | tee -a "$OUT/gpu.log"
PYTHONUNBUFFERED=1 timeout "${GPU_RUN_TIMEOUT:-470}" python3 benchmarks/gpu_train_throughput.py --budget_s 400 --out "$OUT/gpu.json" "$@" 2>&1 | tee -a "$OUT/gpu.log"
