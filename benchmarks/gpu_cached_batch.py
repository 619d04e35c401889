"""ViT-H/14 + LoRA r=64, bf16, one GPU: the cached-gradient step at big batches vs the plain step.

Model-only (synthetic tensors already on the device, AdamW fused), activation checkpointing on
unless ``--no_checkpointing``: the plain step at ``--plain_batches`` (default 256) and the cached
step (:func:`cnclip_lora.training.cached_step.cached_contrastive_step`) at ``--batches`` x ``--mini_batches``.
Reports samples/s and peak device memory per run; an out-of-memory run is recorded, not fatal.

    bash benchmarks/gpu_cached_run.sh              # on the device: B 1024, 4096 x M 128, 256 vs plain 256
    python benchmarks/gpu_cached_batch.py --smoke  # CPU check of the script with the tiny model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train_throughput import (  # noqa: E402
    build_model,
    is_oom,
    peak_memory_gb,
    reset_memory,
    set_checkpointing,
    sync,
    synthetic_batch,
)

ROOT = Path(__file__).resolve().parents[1]


def run(model, config, batch: int, mini: int | None, steps: int, warmup: int, device, amp: bool, vocab: int) -> dict:
    import torch

    from cnclip_lora.training.cached_step import cached_contrastive_step
    from cnclip_lora.training.loss import ContrastiveLoss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-5, fused=device.type == "cuda")
    loss_fn = ContrastiveLoss(gather=False)
    inputs = synthetic_batch(batch, config, device, vocab)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)  # noqa: E731
    model.train()
    reset_memory(device)

    def step() -> None:
        if mini is None:
            with autocast():
                out = model(**inputs)
                loss = loss_fn(out.text_embeds, out.image_embeds, model.logit_scale).loss
            loss.backward()
        else:
            cached_contrastive_step(model, inputs, loss_fn, model.logit_scale, mini, autocast=autocast)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            step()
        sync(device)
        span = time.perf_counter() - t0
    finally:
        optimizer = None
        inputs.clear()
    return {"samples_per_s": round(steps * batch / span, 2), "peak_mem_gb": peak_memory_gb(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/gpu_cached_batch.json")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, small batches")
    p.add_argument("--plain_batches", default="256")
    p.add_argument("--batches", default="1024,4096")
    p.add_argument("--mini_batches", default="128,256")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no_checkpointing", action="store_true")
    p.add_argument("--budget_s", type=float, default=480.0, help="stop starting new runs after this many seconds")
    a = p.parse_args()

    import torch

    if a.smoke:
        a.plain_batches, a.batches, a.mini_batches, a.steps = "8", "16,32", "4", 1
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    amp = device.type == "cuda"
    vocab = 21128
    model, config = build_model(a.smoke, device, torch.bfloat16 if amp else torch.float32, vocab)
    set_checkpointing(model, not a.no_checkpointing)
    plan = [(int(b), None) for b in a.plain_batches.split(",") if b]
    plan += [(int(b), int(m)) for b in a.batches.split(",") if b for m in a.mini_batches.split(",") if m]
    results = {
        "benchmark": "gpu_cached_batch",
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "checkpointing": not a.no_checkpointing,
        "runs": [],
    }
    start = time.time()
    for batch, mini in plan:
        if time.time() - start > a.budget_s:
            results["runs"].append({"batch": batch, "mini_batch": mini, "skipped": "budget"})
            continue
        try:
            r = run(model, config, batch, mini, a.steps, a.warmup, device, amp, vocab)
        except Exception as err:  # an OOM is a result; anything else is re-raised
            if not is_oom(err):
                raise
            r = {"oom": True}
            torch.cuda.empty_cache()
        results["runs"].append({"batch": batch, "mini_batch": mini, **r})
        print(json.dumps(results["runs"][-1]), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
