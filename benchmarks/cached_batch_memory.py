"""Peak memory and samples/s of the cached-gradient step vs the plain step, per batch size, on CPU.

Each variant runs in a fresh process (``_common.run_child``): the tiny model (the demo's, 64-px
images, 52-token titles) + LoRA r=8, one synthetic batch of ``B`` rows built before the clock,
then ``--steps`` optimizer steps (after one warm-up step). Reported per variant:

* ``step_peak_mb``: peak RSS during the steps minus RSS once the model and the batch are in memory
  (``getrusage`` high-water mark, so it catches the activation peak that ``tracemalloc`` misses:
  torch allocates outside Python's allocator). This is what the cached step bounds by ``M``.
* ``peak_rss_mb``: the process's whole peak (model, batch, allocator caches).
* samples/s over the timed steps.

    python benchmarks/cached_batch_memory.py                      # B = 64, 256, 1024; M = 32; plain at each B
    python benchmarks/cached_batch_memory.py --batches 64 256 --mini_batch 16 --steps 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, machine_info, print_table, run_child, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(variant: str, args: argparse.Namespace) -> None:
    import torch
    from transformers import ChineseCLIPModel

    from cnclip_lora.demo.tiny_model import make_tiny_model
    from cnclip_lora.modeling import apply_lora
    from cnclip_lora.training.cached_step import cached_contrastive_step
    from cnclip_lora.training.loss import ContrastiveLoss

    torch.set_num_threads(args.threads)
    mode, batch_size = variant.split("@")
    batch_size = int(batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "tiny", seed=0)
        model = apply_lora(ChineseCLIPModel.from_pretrained(model_dir), r=8, alpha=16).train()
    config = model.config
    gen = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    inputs = {
        "input_ids": torch.randint(1, config.text_config.vocab_size, (batch_size, 52), generator=gen),
        "attention_mask": torch.ones(batch_size, 52, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=gen),
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = ContrastiveLoss()

    def step() -> None:
        if mode == "plain":
            out = model(**inputs)
            loss_fn(out.text_embeds, out.image_embeds, model.logit_scale).loss.backward()
        else:
            cached_contrastive_step(model, inputs, loss_fn, model.logit_scale, args.mini_batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    baseline = _rss_mb()
    step()  # warm-up (allocates the optimizer state too)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    child_main(
        {
            "variant": variant,
            "mode": mode,
            "batch": batch_size,
            "mini_batch": args.mini_batch if mode == "cached" else None,
            "samples_per_s": round(args.steps * batch_size / elapsed, 2),
            "baseline_rss_mb": round(baseline, 1),
            "step_peak_mb": round(peak - baseline, 1),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--mini_batch", type=int, default=32)
    parser.add_argument(
        "--plain_batches",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes for the plain step (default: the same as --batches)",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "cached_batch_memory.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    plain = args.batches if args.plain_batches is None else args.plain_batches
    variants = [f"plain@{b}" for b in plain] + [f"cached@{b}" for b in args.batches]
    extra = ["--mini_batch", str(args.mini_batch), "--steps", str(args.steps), "--threads", str(args.threads)]
    runs = []
    for variant in variants:
        runs.append(run_child(__file__, variant, extra))
        print(f"{variant}: {runs[-1]['samples_per_s']} samples/s, step peak {runs[-1]['step_peak_mb']} MB", flush=True)
    rows = [
        [r["mode"], r["batch"], r["mini_batch"] or "-", r["step_peak_mb"], r["peak_rss_mb"], r["samples_per_s"]]
        for r in runs
    ]
    print_table(rows, ["step", "B", "M", "step peak above model+batch (MB)", "process peak RSS (MB)", "samples/s"])
    write_json(args.out, {"machine": machine_info(), "command": " ".join(sys.argv), "runs": runs})


if __name__ == "__main__":
    main()
