"""GPU training throughput of Chinese-CLIP ViT-H/14 + LoRA: pipeline vs model-only vs seed-style, with MFU.

Everything in one run, on one card, inside a time budget (``--budget_s``; parts that would not
fit are skipped and say so):

1. synthesise 224-px JPEGs (:func:`cnclip_lora.demo.data.make_demo_data`) so decoding is real;
2. build ViT-H/14 from its configuration (:func:`cnclip_lora.modeling.h14_config`) with random
   weights (no download), bf16 weights, SDPA attention, LoRA r=64/alpha=96 on Q/K/V of both towers
   (:func:`cnclip_lora.modeling.apply_lora`; the LoRA weights stay float32 for the optimizer);
3. for gradient checkpointing off and on: the largest power-of-two batch whose model-only step
   fits, then
   * ``model_only``: fwd + contrastive loss + bwd + fused AdamW on pre-built GPU tensors (the limit),
   * ``pipeline``: ``CnClipLoraTrainer`` + ``ImageTextCollator`` with ``bf16=True`` and
     DataLoader workers (what ``cnclip-lora train --bf16 true`` runs);
4. ``seed``: the seed's loop at the pipeline's best batch: fp32 weights, no autocast, main-process
   PIL open + flip + ``processor(text=, images=)`` per batch, ``model(..., return_loss=True)``,
   ``torch.optim.AdamW`` (gradient checkpointing only if fp32 would not fit otherwise).

MFU counts model FLOPs only (:mod:`cnclip_lora.training.flops`; recomputation under checkpointing is not credited), per sample:

* frozen linear/conv weights ``N`` applied to ``T`` tokens: ``2*N*T`` forward + ``2*N*T`` for
  the input gradients in backward (no weight gradients): ``4*N*T``;
* LoRA weights ``N_lora``: ``6*N_lora*T`` (forward, input and weight gradients);
* attention scores and weighted sum, ``4*T^2*d`` per layer forward, x3 with backward;
* ``T`` = 52 text tokens (text tower) and 257 patches + CLS (vision tower).

MFU = FLOPs/s / the card's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s; ``--peak_tflops``
overrides; H100 PCIe 756 and H100 NVL 835 are recognised by name).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train_throughput.py --out $OUT/gpu.json
    python benchmarks/gpu_train_throughput.py --smoke     # CPU, tiny config, 2 steps: checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
TEXT_TOKENS = 52


def elapsed() -> float:
    return time.perf_counter() - T_START


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- FLOPs
def flops_per_sample(model, config, text_tokens: int = TEXT_TOKENS) -> dict[str, float]:
    """Model FLOPs of one training sample (:mod:`cnclip_lora.training.flops`, the formula above), in GFLOP."""
    from cnclip_lora.training.flops import training_flops_per_sample

    f = training_flops_per_sample(model, config, text_tokens)
    out = {k: v for k, v in f.items() if k.endswith(("_params", "_tokens"))}
    out.update(text_gflops=f["text"] / 1e9, vision_gflops=f["vision"] / 1e9, total_gflops=f["total"] / 1e9)
    return out


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    if "H100" in device_name and "PCIe" in device_name:
        return 756.0
    if "H100" in device_name and "NVL" in device_name:
        return 835.0
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


# ------------------------------------------------------------------------------------------- setup
def build_data(root: Path, n_images: int, image_size: int) -> list[dict[str, str]]:
    import pandas as pd

    from cnclip_lora.demo.data import make_demo_data

    make_demo_data(root, seed=0, n_train=n_images, n_queries=2, n_distractors=0, image_size=image_size)
    return pd.read_csv(root / "train.csv", sep="\t", dtype=str).to_dict("records")


def build_model(smoke: bool, device, dtype, vocab_size: int):
    import torch
    from transformers import ChineseCLIPModel

    from cnclip_lora.demo.tiny_model import tiny_config
    from cnclip_lora.modeling import apply_lora, h14_config

    config = tiny_config(vocab_size, image_size=64) if smoke else h14_config()
    # The tiny tokenizer's vocabulary is a little larger than ViT-H's 21,128: keep every id valid.
    config.text_config.vocab_size = max(config.text_config.vocab_size, vocab_size)
    with torch.device(device):
        model = ChineseCLIPModel._from_config(config, attn_implementation="sdpa", dtype=dtype)
    model = apply_lora(model, r=8 if smoke else 64, alpha=16 if smoke else 96)
    return model, config


def synthetic_batch(batch: int, config, device, vocab_size: int) -> dict[str, Any]:
    import torch

    size = config.vision_config.image_size
    ids = torch.randint(5, vocab_size, (batch, TEXT_TOKENS), device=device)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "pixel_values": torch.randn(batch, 3, size, size, device=device),
    }


def set_checkpointing(model, on: bool) -> None:
    base = model.get_base_model()
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# ------------------------------------------------------------------------------------------- runs
def model_only(
    model,
    config,
    batch: int,
    steps: int,
    warmup: int,
    device,
    amp: bool,
    vocab: int,
    compiled: bool = False,
    profile_steps: int = 0,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """fwd + loss + bwd + fused AdamW on tensors already on the device.

    ``compiled``: run through ``accelerate.utils.compile_regions`` (each encoder layer compiled once
    per tower and reused), which is what ``--torch_compile true`` makes the Trainer do; the first
    step (compilation) is timed separately as ``compile_s``.
    ``profile_steps``: after the timed steps, that many more under ``torch.profiler``, summarised
    by :func:`kernel_time_summary` as ``out["profile"]`` (where the step's time goes).
    """
    import torch

    from cnclip_lora.training.loss import ContrastiveLoss

    forward_model = model
    if compiled:
        from accelerate.utils import compile_regions

        forward_model = compile_regions(model, **({"mode": compile_mode} if compile_mode else {}))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-5, fused=device.type == "cuda")
    loss_fn = ContrastiveLoss(gather=False)
    inputs = synthetic_batch(batch, config, device, vocab)
    model.train()
    reset_memory(device)
    t0 = 0.0
    t_first = time.perf_counter()
    compile_s = None

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward_model(**inputs)
            loss = loss_fn(out.text_embeds, out.image_embeds, model.logit_scale).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    profile = None
    try:
        for i in range(warmup + steps):
            if i == 1:
                sync(device)
                compile_s = time.perf_counter() - t_first
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            step()
        sync(device)
        span = time.perf_counter() - t0
        if profile_steps:
            profile = profile_model_steps(step, profile_steps, device)
    finally:
        optimizer = None  # frees its state before the next run builds another (step() is done with it)
        inputs.clear()
    out = {"samples_per_s": steps * batch / span if steps else None, "peak_mem_gb": peak_memory_gb(device)}
    if compiled:
        out["first_step_s"] = compile_s
    if profile is not None:
        out["profile"] = profile
    return out


# Kernel families by name, first match wins (attention kernels' names also contain "gemm").
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "addmm", "::mm", "bmm", "convolution")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("compiled (triton)", ("triton",)),
    ("norm / softmax / reduce", ("norm", "softmax", "reduce")),
    ("copy / cast / fill", ("copy", "memcpy", "memset", "cast", "convert", "fill", "cat")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "mul", "add", "div", "sqrt", "gelu", "sigmoid")),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    return next((family for family, keys in KERNEL_FAMILIES if any(k in low for k in keys)), "other")


def kernel_time_summary(
    events: list[tuple[str, float, int]], wall_ms: float, steps: int, top: int = 25
) -> dict[str, Any]:
    """Per-step device time by kernel family and the top kernels, from ``(name, total_ms, calls)``.

    ``busy`` (kernel time / wall time) below 1 means the device waited on the host (launch gaps,
    syncs); the profiler itself slows the host, so it is a lower bound: compare the unprofiled
    samples/s with ``1000 * batch / kernel_ms_per_step`` instead. The families say which kind of
    work the remaining MFU is lost in.
    """
    total = sum(ms for _, ms, _ in events)
    families: dict[str, float] = {}
    for name, ms, _ in events:
        families[kernel_family(name)] = families.get(kernel_family(name), 0.0) + ms
    ranked = sorted(events, key=lambda e: -e[1])[:top]
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms / steps,
        "kernel_ms_per_step": total / steps,
        "busy": total / wall_ms if wall_ms else None,
        "families": {
            f: {"ms_per_step": ms / steps, "share": ms / total if total else None}
            for f, ms in sorted(families.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"name": n[:160], "family": kernel_family(n), "ms_per_step": ms / steps, "calls_per_step": c / steps}
            for n, ms, c in ranked
        ],
    }


def print_profile(profile: dict[str, Any], label: str, top: int = 12) -> None:
    busy = f"{profile['busy']:.2f}" if profile["busy"] is not None else "-"
    print(
        f"\nprofile of {label}: {profile['wall_ms_per_step']:.1f} ms/step wall, "
        f"{profile['kernel_ms_per_step']:.1f} ms/step in kernels (busy {busy})"
    )
    print("| kernel family | ms/step | share |\n|---|---|---|")
    for family, f in profile["families"].items():
        print(f"| {family} | {f['ms_per_step']:.2f} | {f['share']:.3f} |")
    print("| top kernel | family | ms/step | calls/step |\n|---|---|---|---|")
    for k in profile["top"][:top]:
        print(f"| {k['name'][:90]} | {k['family']} | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} |")


def profile_model_steps(step, steps: int, device) -> dict[str, Any]:
    """Run ``step()`` ``steps`` times under ``torch.profiler``; device kernels on a GPU, CPU ops otherwise."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    if cuda:
        events = [
            (e.key, e.self_device_time_total / 1e3, e.count)
            for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
        ]
    else:  # CPU smoke run: leaf-most time of the CPU ops stands in for kernels
        events = [
            (e.key, e.self_cpu_time_total / 1e3, e.count)
            for e in prof.key_averages()
            if e.self_cpu_time_total > 0 and e.key.startswith("aten::")
        ]
    return kernel_time_summary(events, wall_ms, steps)


def find_max_batch(model, config, candidates: list[int], device, amp: bool, vocab: int, mem_cap: float) -> int | None:
    """Largest candidate whose model-only step fits with ``mem_cap`` of the card to spare for the pipeline."""
    import torch

    best = None
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if device.type == "cuda" else None
    for b in candidates:
        try:
            r = model_only(model, config, b, steps=0, warmup=1, device=device, amp=amp, vocab=vocab)
        except Exception as err:  # noqa: BLE001 - only OOM is expected; anything else is re-raised
            if not is_oom(err):
                raise
            log(f"  batch {b}: out of memory")
            break
        finally:
            reset_memory(device)
        log(f"  batch {b}: fits, peak {r['peak_mem_gb'] or 0:.1f} GB")
        best = b
        if total and r["peak_mem_gb"] > mem_cap * total:
            break
    return best


def pipeline(
    model,
    processor,
    rows,
    image_dir: Path,
    batch: int,
    steps: int,
    warmup: int,
    checkpointing: bool,
    workers: int,
    device,
    bf16: bool,
    pixel_cache: Any = None,
    **extra_args: Any,
) -> dict[str, Any]:
    """``CnClipLoraTrainer`` + ``ImageTextCollator``, as ``cnclip-lora train`` builds them.

    The clock is synchronised with the GPU only at the start and the end of the measured steps
    (a sync every step would stall the CPU's run-ahead and understate the pipeline).
    ``extra_args`` go to ``CnClipTrainingArguments`` (e.g. ``torch_compile=True``).
    """
    import datasets
    from transformers import TrainerCallback

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.inputs.collate import ImageTextCollator
    from cnclip_lora.training.trainer import CnClipLoraTrainer, release_accelerate_preparation

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, warmup, warmup + steps):
                sync(device)
            times.append(time.perf_counter())

    fields = {f.name for f in dataclasses.fields(CnClipTrainingArguments)}
    workers = extra_args.pop("dataloader_num_workers", workers)  # prefetch and persistence follow it
    # A data option, not a TrainingArguments one: unset = the package's rule (static 52 tokens for
    # --torch_compile on a GPU, else per-batch padding to the longest title), as `train()` applies it.
    pad_to_max_length = extra_args.pop("pad_to_max_length", None)
    need = batch * 2
    rows = (rows * (need // len(rows) + 1))[: max(need, len(rows))]
    dataset = datasets.Dataset.from_list(rows)
    set_checkpointing(model, False)
    reset_memory(device)
    with tempfile.TemporaryDirectory() as out:
        args = CnClipTrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=warmup + steps,
            bf16=bf16,
            gradient_checkpointing=checkpointing,
            dataloader_num_workers=workers,
            dataloader_persistent_workers=workers > 0,
            dataloader_prefetch_factor=2 if workers else None,
            dataloader_pin_memory=device.type == "cuda",
            save_strategy="no",
            report_to="none",
            logging_steps=10**6,
            disable_tqdm=True,
            use_cpu=device.type != "cuda",
            # Throughput only: rows repeat when n_images < 2 x batch, and the unique-image sampler
            # would then drop them (an epoch with no full batch stops training at step 0).
            **({"unique_images_per_batch": False} if "unique_images_per_batch" in fields else {}),
            **extra_args,
        )
        from cnclip_lora.training.run import static_title_padding

        pad_to_max_length = static_title_padding(pad_to_max_length, args)
        trainer = CnClipLoraTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            data_collator=ImageTextCollator(
                processor, image_dir, flip="always", pixel_cache=pixel_cache, pad_to_max_length=pad_to_max_length
            ),
            callbacks=[StepTimer()],
        )
        t_start = time.perf_counter()
        try:
            trainer.train()
            from accelerate.utils import has_compiled_regions, is_compiled_module

            wrapped = trainer.model_wrapped
            compiled_state = {
                "dynamo_backend": str(trainer.accelerator.state.dynamo_plugin.backend),
                "model_compiled": is_compiled_module(wrapped) or has_compiled_regions(wrapped),
            }
        finally:
            trainer.optimizer = None
            trainer.lr_scheduler = None
            del trainer
            set_checkpointing(model, False)
            release_accelerate_preparation(model)
    span = times[warmup + steps - 1] - times[warmup - 1]
    return {
        "samples_per_s": steps * batch / span,
        "peak_mem_gb": peak_memory_gb(device),
        "workers": workers,
        "first_step_s": times[0] - t_start,
        "pad_to_max_length": pad_to_max_length,
        **compiled_state,
        **{k: str(v) for k, v in extra_args.items()},
    }


def seed_loop(model, processor, rows, image_dir: Path, batch: int, steps: int, warmup: int, device) -> dict[str, Any]:
    """The seed's loop: fp32, main-process decode + flip + processor per batch, HF loss."""
    import torch
    from PIL import Image

    from cnclip_lora.training.trainer import release_accelerate_preparation

    # True fp32 as the seed ran it (torch's defaults): no TF32 for matmuls, whatever an earlier part
    # of this run switched on (TrainingArguments(torch_compile=True) enables TF32 process-wide).
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    precision = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "ieee", "tf32"  # torch's defaults (convs: TF32 allowed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-5)
    model.train()
    release_accelerate_preparation(model)
    seen: dict[str, str] = {}
    probe = next(
        m for n, m in model.named_modules() if n.endswith("vision_model.encoder.layers.0.self_attn.q_proj.base_layer")
    )

    def record_dtype(module, args, output) -> None:  # returns None: the output is left as it is
        seen.setdefault("dtype", str(output.dtype))

    hook = probe.register_forward_hook(record_dtype)
    reset_memory(device)
    t0 = 0.0
    try:
        for step in range(warmup + steps):
            if step == warmup:
                sync(device)
                t0 = time.perf_counter()
            chunk = [rows[(step * batch + i) % len(rows)] for i in range(batch)]
            images = [
                Image.open(image_dir / r["path"]).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                for r in chunk
            ]
            inputs = processor(
                text=[r["title"] for r in chunk],
                images=images,
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=TEXT_TOKENS,
            )
            inputs = {k: v.to(device) for k, v in inputs.items()}
            model(**inputs, return_loss=True).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        sync(device)
        span = time.perf_counter() - t0
    finally:
        del optimizer
        hook.remove()
        matmul.fp32_precision, conv.fp32_precision = precision
    return {
        "samples_per_s": steps * batch / span,
        "peak_mem_gb": peak_memory_gb(device),
        "fp32_precision_before": list(precision),
        "q_proj_output_dtype": seen.get("dtype"),
    }


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/gpu_train_throughput.json")
    p.add_argument("--smoke", action="store_true", help="CPU-friendly: tiny config, 2 steps")
    p.add_argument("--budget_s", type=float, default=450.0, help="stop starting new parts after this many seconds")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed_steps", type=int, default=4)
    p.add_argument(
        "--n_images",
        type=int,
        default=4096,
        help="synthetic JPEGs; an epoch should outlast the measured steps (a new epoch restarts the "
        "workers' prefetch, which real epochs of thousands of steps do not see)",
    )
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 2, at most 8)")
    p.add_argument("--batches_gc_off", default="32,64,128,256,512")
    p.add_argument("--batches_gc_on", default="64,128,256,512,1024")
    p.add_argument("--mem_cap", type=float, default=0.85, help="share of the card a model-only step may use")
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--skip_seed", action="store_true")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also measure model-only and pipeline with --torch_compile (regional), checkpointing off",
    )
    p.add_argument(
        "--pixel_cache",
        action="store_true",
        help="also measure pipelines whose collator reads the decode-once pixel cache (its build is timed)",
    )
    p.add_argument(
        "--no_eager_pipeline",
        action="store_true",
        help="with --compile, measure only compiled pipelines (checkpointing off): saves device time",
    )
    p.add_argument(
        "--ab_syncs",
        action="store_true",
        help="after each pipeline run, repeat it with transformers' per-step syncs back "
        "(logging_nan_inf_filter on, blocking host-to-device copies): the A/B of those defaults",
    )
    p.add_argument(
        "--compile_mode",
        default=None,
        help="torch.compile mode for the compiled runs (model-only and pipeline's torch_compile_mode), "
        "e.g. max-autotune-no-cudagraphs",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="profile this many extra model-only steps (compiled with --compile, checkpointing off) "
        "and report device time by kernel family: where the MFU is lost",
    )
    p.add_argument(
        "--ab_pipeline_args",
        type=json.loads,
        default={},
        help="after each pipeline run, repeat it with these CnClipTrainingArguments on top, e.g. "
        "'{\"dataloader_num_workers\": 0}' (does a GPU box need DataLoader workers?)",
    )
    p.add_argument(
        "--pipeline_args",
        type=json.loads,
        default={},
        help="JSON of extra CnClipTrainingArguments for every pipeline run, e.g. '{\"dataloader_prefetch_factor\": 4}'",
    )
    a = p.parse_args()

    import torch
    from transformers import ChineseCLIPProcessor

    from cnclip_lora.demo.tiny_model import build_tiny_vocab, make_tiny_model

    if a.smoke:
        a.steps, a.warmup, a.seed_steps, a.n_images = 2, 1, 1, 16
        a.batches_gc_off, a.batches_gc_on = "4,8", "4,8"
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    amp = device.type == "cuda"
    workers = a.workers if a.workers is not None else (0 if a.smoke else max(1, min(8, (os.cpu_count() or 4) - 2)))
    results: dict[str, Any] = {
        "benchmark": "gpu_train_throughput",
        "command": " ".join(sys.argv),
        "smoke": a.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "compile_mode": a.compile_mode,
        "runs": [],
        "skipped": [],
        "errors": [],
    }
    import transformers

    results["transformers"] = transformers.__version__

    def save() -> None:
        from cnclip_lora.utils.files import atomic_write_text

        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, json.dumps(results, indent=2) + "\n")

    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    image_size = 64 if a.smoke else 224
    log(f"device {results['device']}; synthesising {a.n_images} {image_size}-px JPEGs")
    rows = build_data(work / "data", a.n_images, 224)
    proc_dir = make_tiny_model(
        work / "proc",
        image_size=image_size,
        patch_size=16 if a.smoke else 14,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        projection_dim=16,
    )
    from cnclip_lora.modeling import pin_pil_image_processor

    # As cnclip-lora loads it: the PIL backend even where torchvision is installed (the GPU box).
    processor = pin_pil_image_processor(ChineseCLIPProcessor.from_pretrained(proc_dir), str(proc_dir))
    results["image_processor"] = type(processor.image_processor).__name__
    vocab = len(build_tiny_vocab())
    log("building the model")
    model, config = build_model(a.smoke, device, torch.bfloat16 if amp else torch.float32, vocab)
    flops = flops_per_sample(model, config)
    results["flops_per_sample"] = flops
    results["attn_implementation"] = model.get_base_model().config._attn_implementation
    peak = peak_tflops(results["device"], a.peak_tflops)
    results["peak_bf16_tflops"] = peak
    log(f"model built: {flops['total_gflops']:.1f} GFLOP/sample; peak {peak} TFLOP/s")
    save()

    def record(kind: str, checkpointing: bool, batch: int, r: dict[str, Any], **extra: Any) -> None:
        tflops = r["samples_per_s"] * flops["total_gflops"] / 1e3
        run = {
            "kind": kind,
            "checkpointing": checkpointing,
            "batch": batch,
            **r,
            "model_tflops": tflops,
            "mfu": tflops / peak if peak else None,
            **extra,
        }
        results["runs"].append(run)
        log(
            f"  {kind:<10} gc={checkpointing!s:<5} batch {batch:<5} {r['samples_per_s']:8.1f} samples/s  "
            f"{tflops:7.1f} TFLOP/s  MFU {run['mfu'] if run['mfu'] is not None else float('nan'):.3f}  "
            f"peak {r.get('peak_mem_gb') or 0:.1f} GB"
        )
        save()

    def guarded(label: str, reserve_s: float, fn) -> Any:
        if elapsed() + reserve_s > a.budget_s:
            results["skipped"].append(f"{label}: time budget")
            log(f"skip {label}: time budget")
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one failed part must not lose the others' numbers
            results["errors"].append(f"{label}: {type(err).__name__}: {str(err)[:500]}")
            log(f"{label} failed: {type(err).__name__}: {str(err)[:300]}")
            traceback.print_exc()
            reset_memory(device)
            return None

    best_pipeline: tuple[float, int, bool] | None = None
    image_dir = work / "data" / "image"
    cache: dict[str, Any] = {}

    def pixel_cache() -> Any:
        """Built once, timed: the decode-once cache ``cnclip-lora train`` builds (cache_images auto)."""
        if "cache" not in cache:
            from cnclip_lora.training.pixel_cache import build_pixel_cache

            t0 = time.perf_counter()
            cache["cache"] = build_pixel_cache(
                image_dir, [r["path"] for r in rows], processor.image_processor, cache_dir=work / "pixels"
            )
            results["pixel_cache_build_s"] = time.perf_counter() - t0
            log(f"pixel cache: {len(cache['cache'])} images in {results['pixel_cache_build_s']:.1f} s")
        return cache["cache"]

    # A/B variants repeated after each pipeline run (second, so any first-run cost falls on the
    # package's defaults); they are baselines, never candidates for the best pipeline.
    ab_variants: dict[str, dict[str, Any]] = {}
    if a.ab_syncs:  # transformers' defaults: a loss read-back and a blocking batch copy every step
        ab_variants["old_syncs"] = {"logging_nan_inf_filter": True, "accelerator_config": {"non_blocking": False}}
    if a.ab_pipeline_args:
        ab_variants["ab " + json.dumps(a.ab_pipeline_args, sort_keys=True)] = a.ab_pipeline_args

    def run_pipeline(
        checkpointing: bool, batch: int, *, compiled: bool, cached: bool, variant: str = "default"
    ) -> None:
        nonlocal best_pipeline
        extra = dict(a.pipeline_args, **({"torch_compile": True} if compiled else {}))
        if compiled and a.compile_mode:
            extra["torch_compile_mode"] = a.compile_mode
        extra.update(ab_variants.get(variant, {}))
        label = f"pipeline gc={checkpointing} compiled={compiled} cached={cached} variant={variant}"
        r = guarded(
            label,
            120 if compiled else 60,
            lambda: pipeline(
                model,
                processor,
                rows,
                image_dir,
                batch,
                a.steps,
                a.warmup,
                checkpointing,
                workers,
                device,
                amp,
                pixel_cache=pixel_cache() if cached else None,
                **extra,
            ),
        )
        if r:
            record("pipeline", checkpointing, batch, r, compiled=compiled, cached=cached, variant=variant)
            if variant == "default" and (best_pipeline is None or r["samples_per_s"] > best_pipeline[0]):
                best_pipeline = (r["samples_per_s"], batch, checkpointing)
        reset_memory(device)
        if variant == "default":
            for name in ab_variants:
                run_pipeline(checkpointing, batch, compiled=compiled, cached=cached, variant=name)

    for checkpointing, cands in ((False, a.batches_gc_off), (True, a.batches_gc_on)):
        if not cands:
            continue
        set_checkpointing(model, checkpointing)
        log(f"gradient checkpointing {checkpointing}: searching the batch")
        batch = guarded(
            f"batch search gc={checkpointing}",
            30,
            lambda: find_max_batch(model, config, [int(x) for x in cands.split(",")], device, amp, vocab, a.mem_cap),
        )
        if not batch:
            continue
        results[f"max_batch_gc_{'on' if checkpointing else 'off'}"] = batch
        profile_eager = a.profile if not (a.compile or checkpointing) else 0
        r = guarded(
            f"model_only gc={checkpointing}",
            30,
            lambda: model_only(
                model, config, batch, a.steps, a.warmup, device, amp, vocab, profile_steps=profile_eager
            ),
        )
        if r:
            record("model_only", checkpointing, batch, r)
        reset_memory(device)
        if not (a.no_eager_pipeline and a.compile and not checkpointing):
            run_pipeline(checkpointing, batch, compiled=False, cached=False)
            if a.pixel_cache:
                run_pipeline(checkpointing, batch, compiled=False, cached=True)
        if a.compile and not checkpointing:
            r = guarded(
                "model_only compiled",
                120,
                lambda: model_only(
                    model,
                    config,
                    batch,
                    a.steps,
                    a.warmup,
                    device,
                    amp,
                    vocab,
                    compiled=True,
                    profile_steps=a.profile,
                    compile_mode=a.compile_mode,
                ),
            )
            if r:
                record("model_only", checkpointing, batch, r, compiled=True)
            reset_memory(device)
            run_pipeline(checkpointing, batch, compiled=True, cached=False)
            if a.pixel_cache:
                run_pipeline(checkpointing, batch, compiled=True, cached=True)
    set_checkpointing(model, False)

    if not a.skip_seed and best_pipeline is not None:
        _, batch, _ = best_pipeline
        model.float()  # the seed trained in fp32
        for seed_gc in (False, True):
            set_checkpointing(model, seed_gc)
            r = guarded(
                f"seed gc={seed_gc}",
                60,
                lambda: seed_loop(model, processor, rows, work / "data" / "image", batch, a.seed_steps, 1, device),
            )
            if r:
                record("seed", seed_gc, batch, r, dtype="float32")
                break
            reset_memory(device)

    # Summary: the best pipeline against the model-only limit and the seed-style loop.
    def best(kind: str) -> dict[str, Any] | None:
        runs = [r for r in results["runs"] if r["kind"] == kind and r.get("variant", "default") == "default"]
        return max(runs, key=lambda r: r["samples_per_s"]) if runs else None

    bp, bm, bs = best("pipeline"), best("model_only"), best("seed")
    summary: dict[str, Any] = {}
    if bp:
        summary["pipeline_samples_per_s"] = bp["samples_per_s"]
        summary["pipeline_mfu"] = bp["mfu"]
        same = [
            r
            for r in results["runs"]
            if r["kind"] == "model_only"
            and r["checkpointing"] == bp["checkpointing"]
            and r.get("compiled", False) == bp.get("compiled", False)
        ]
        if same:
            summary["pipeline_vs_model_only_same_setting"] = bp["samples_per_s"] / same[0]["samples_per_s"]
    if bp and bm:
        summary["pipeline_vs_best_model_only"] = bp["samples_per_s"] / bm["samples_per_s"]
    if bp and bs:
        summary["pipeline_vs_seed"] = bp["samples_per_s"] / bs["samples_per_s"]
    results["summary"] = summary
    results["elapsed_s"] = elapsed()
    save()

    header = "| kind | compiled | pixel cache | pipeline variant | grad ckpt | batch | samples/s | model TFLOP/s | MFU | peak GB |"
    print("\n" + header + "\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        variant = r.get("variant", "-")
        print(
            f"| {r['kind']} | {r.get('compiled', False)} | {r.get('cached', '-')} | {variant} | {r['checkpointing']} | {r['batch']} | {r['samples_per_s']:.1f} | "
            f"{r['model_tflops']:.1f} | {mfu} | {r.get('peak_mem_gb') or 0:.1f} |"
        )
    for r in results["runs"]:
        if "profile" in r:
            print_profile(r["profile"], f"model_only compiled={r.get('compiled', False)} batch {r['batch']}")
    print("summary:", json.dumps(summary, indent=1))
    print(f"wrote {a.out} ({elapsed():.0f} s)")


if __name__ == "__main__":
    main()
