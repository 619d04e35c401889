"""Training throughput: the package's pipeline vs the model-only limit vs a seed-style loop.

Three kinds of variant, each in a fresh process, interleaved over ``--repeats``:

* ``model_only[:NAME]``: the limit (the fastest of its variants, e.g. 1 vs 2 torch threads). Same tiny model, LoRA, batch and optimizer (the one the Trainer
  builds from ``CnClipTrainingArguments``), fwd + contrastive loss + bwd + step on batches
  tensorised before the clock starts, titles padded per batch to the longest title rounded up
  to a multiple of 8 (pseudo flag ``--fixed_padding``: to 52).
* ``seed``: the seed's loop. Main-process PIL open + flip + ``processor(text=, images=)`` per
  batch, fp32, no workers, ``model(..., return_loss=True).loss``, ``torch.optim.AdamW``.
* ``pipeline[:NAME]``: the real :func:`cnclip_lora.training.run.train` path (``CnClipLoraTrainer`` +
  ``ImageTextCollator``, the package's defaults), plus the flags given for that variant; a
  callback timestamps every optimizer step. Benchmark-only pseudo flags: ``--no_draft``
  (collator decodes JPEGs at full size), ``--no_token_memo`` (every batch's titles are
  tokenised again), ``--no_batched_resize`` (the image processor runs per
  image instead of the collator's batched equivalent) and ``--threads N`` (``torch.set_num_threads``).

Steady state: the first ``--warmup`` steps are skipped; samples/s = steps * batch / time.

    python benchmarks/train_throughput.py                       # defaults: the package as configured
    python benchmarks/train_throughput.py --pipeline w0="--dataloader_num_workers 0" \
        --pipeline w1="--dataloader_num_workers 1 --dataloader_persistent_workers true"
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, machine_info, median_by_variant, print_table, run_child, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rows(data_dir: Path) -> list[dict[str, str]]:
    import pandas as pd

    frame = pd.read_csv(data_dir / "train.csv", sep="\t", dtype=str)
    return frame.to_dict("records")


def _disable_batched_resize() -> None:
    """Make ``preprocess_images`` call the image processor per image, as before the batched path
    (DataLoader workers fork after this, so they inherit it)."""
    import cnclip_lora.inputs.images as images

    images.squash_plan = lambda image_processor: None


def _pop_pseudo_flags(flags: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split benchmark-only flags from the flags passed on to ``train()``."""
    out, extra, it = [], {"draft": True, "threads": None, "token_memo": True, "pad_to_max_length": False}, iter(flags)
    for f in it:
        if f == "--fixed_padding":  # model-only: titles padded to 52 (pipelines take --pad_to_max_length true)
            extra["pad_to_max_length"] = True
        elif f == "--no_draft":
            extra["draft"] = False
        elif f == "--no_token_memo":
            extra["token_memo"] = False
        elif f == "--no_batched_resize":
            _disable_batched_resize()
        elif f == "--threads":
            extra["threads"] = int(next(it))
        else:
            out.append(f)
    return out, extra


# --------------------------------------------------------------------------- children
def child_pipeline(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import functools

    import torch
    from transformers import TrainerCallback

    flags, extra = _pop_pseudo_flags(flags)
    if extra["threads"]:
        torch.set_num_threads(extra["threads"])
    train_mod = importlib.import_module("cnclip_lora.training.run")
    from cnclip_lora.commands.train import train_from_argv

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    class TimedTrainer(train_mod.CnClipLoraTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StepTimer())

    train_mod.CnClipLoraTrainer = TimedTrainer
    collator_kwargs = {"draft": False} if not extra["draft"] else {}
    if not extra["token_memo"]:
        collator_kwargs["max_memo_titles"] = 0
    if collator_kwargs:
        train_mod.ImageTextCollator = functools.partial(train_mod.ImageTextCollator, **collator_kwargs)
    with tempfile.TemporaryDirectory() as out:
        argv = [
            "--model_name_or_path",
            a.model,
            "--data_dir",
            str(a.data),
            "--output_dir",
            out,
            "--max_steps",
            str(a.warmup + a.steps),
            "--per_device_train_batch_size",
            str(a.batch),
            "--lora_r",
            str(a.lora_r),
            "--lora_alpha",
            str(2 * a.lora_r),
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--val_size",
            "0",
            "--check_images",
            "false",
            "--logging_steps",
            "100000",
            "--disable_tqdm",
            "true",
            "--cache_dir",
            str(Path(out) / "cache"),
            *flags,
        ]
        t_call = time.perf_counter()
        train_from_argv(argv)
    span = times[a.warmup + a.steps - 1] - times[a.warmup - 1]
    # setup_s: train() call to the end of step 1 (data checks, model load, a cold pixel cache build).
    return {
        "samples_per_s": a.steps * a.batch / span,
        "torch_threads": torch.get_num_threads(),
        "setup_s": times[0] - t_call,
    }


def child_model_only(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import torch
    from transformers import Trainer

    from cnclip_lora.config import CnClipTrainingArguments
    from cnclip_lora.inputs.collate import ImageTextCollator
    from cnclip_lora.modeling import apply_lora, load_model_and_processor
    from cnclip_lora.training.loss import ContrastiveLoss

    _, extra = _pop_pseudo_flags(flags)
    if extra["threads"]:
        torch.set_num_threads(extra["threads"])
    model, processor = load_model_and_processor(a.model, attn_implementation="sdpa")
    model = apply_lora(model, r=a.lora_r, alpha=2 * a.lora_r)
    model.train()
    rows = _rows(a.data)
    # Titles padded as the package pads them: per batch to the longest (multiple of 8) unless
    # --fixed_padding; the same padding as a seed-style ``padding=True`` loop, up to 7 tokens.
    collate = ImageTextCollator(
        processor, a.data / "image", flip="always", pad_to_max_length=extra["pad_to_max_length"]
    )
    batches = [collate(rows[i * a.batch : (i + 1) * a.batch]) for i in range(min(8, len(rows) // a.batch))]
    with tempfile.TemporaryDirectory() as out:
        targs = CnClipTrainingArguments(output_dir=out, use_cpu=True, report_to="none")
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    optimizer = opt_cls([p for p in model.parameters() if p.requires_grad], **opt_kwargs)
    loss_fn = ContrastiveLoss(gather=False)
    t0 = 0.0
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        out = model(**batches[step % len(batches)])
        loss_fn(out.text_embeds, out.image_embeds, model.logit_scale).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    span = time.perf_counter() - t0
    return {
        "samples_per_s": a.steps * a.batch / span,
        "optimizer": opt_cls.__name__,
        "optimizer_kwargs": str(opt_kwargs),
    }


def child_seed(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import random

    import torch
    from PIL import Image
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    from cnclip_lora.modeling import apply_lora

    _, extra = _pop_pseudo_flags(flags)
    if extra["threads"]:
        torch.set_num_threads(extra["threads"])
    model = ChineseCLIPModel.from_pretrained(a.model)
    processor = ChineseCLIPProcessor.from_pretrained(a.model)
    model = apply_lora(model, r=a.lora_r, alpha=2 * a.lora_r)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-5)
    rows = _rows(a.data)
    random.Random(0).shuffle(rows)
    per_epoch = len(rows) // a.batch
    t0 = 0.0
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        chunk = rows[(step % per_epoch) * a.batch : (step % per_epoch + 1) * a.batch]
        images = [
            Image.open(a.data / "image" / r["path"]).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            for r in chunk
        ]
        inputs = processor(
            text=[r["title"] for r in chunk],
            images=images,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=52,
        )
        model(**inputs, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    span = time.perf_counter() - t0
    return {"samples_per_s": a.steps * a.batch / span}


# --------------------------------------------------------------------------- parent
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "xfdata")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument(
        "--pipeline",
        action="append",
        default=None,
        metavar="NAME=FLAGS",
        help="a pipeline variant with extra train flags (repeatable); default: one, the package's defaults",
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["model_only", "seed"])
    p.add_argument("--seed_flags", default="", help="pseudo flags for the seed-style loop (e.g. '--threads 1')")
    p.add_argument(
        "--model_only",
        action="append",
        default=None,
        metavar="NAME=FLAGS",
        help="a model-only variant with pseudo flags (repeatable); the fastest one is the limit. "
        "Default: '--threads 1' and '--threads 2'",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/train_throughput.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--flags", default="", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        kind = a.child.split(":")[0]
        fn = {"pipeline": child_pipeline, "model_only": child_model_only, "seed": child_seed}[kind]
        child_main({"variant": a.child, **fn(a, shlex.split(a.flags))})
        return

    pipelines = dict(v.split("=", 1) if "=" in v else (v, "") for v in (a.pipeline or ["default="]))
    variants = [(f"pipeline:{name}", flags) for name, flags in pipelines.items()]
    if "model_only" not in a.skip:
        limits = dict(
            v.split("=", 1) if "=" in v else (v, "") for v in (a.model_only or ["t1=--threads 1", "t2=--threads 2"])
        )
        variants[:0] = [(f"model_only:{name}", flags) for name, flags in limits.items()]
    if "seed" not in a.skip:
        variants.append(("seed", a.seed_flags))
    common = [
        "--data",
        str(a.data),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--lora_r",
        str(a.lora_r),
    ]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        from cnclip_lora.demo.tiny_model import make_tiny_model

        model_dir = str(make_tiny_model(Path(tmp) / "tiny", image_size=64))
        for rep in range(a.repeats):
            for name, flags in variants:
                r = run_child(__file__, name, [*common, "--model", model_dir, f"--flags={flags}"])
                print(f"  repeat {rep + 1}: {name:<24} {r['samples_per_s']:8.1f} samples/s", flush=True)
                runs.append({**r, "flags": flags})
    med = median_by_variant(runs, "samples_per_s")
    limits = [m["samples_per_s"] for name, m in med.items() if name.startswith("model_only")]
    limit = max(limits) if limits else None  # the best thread setting is the limit
    seed = med.get("seed", {}).get("samples_per_s")
    rows = []
    for name, flags in variants:
        m = med[name]
        s = m["samples_per_s"]
        rows.append(
            [
                name,
                flags or "-",
                round(s, 1),
                round(s / limit, 3) if limit else "-",
                round(s / seed, 3) if seed else "-",
                round(m["peak_rss_mb"]),
                round(m["peak_rss_children_mb"]),
                round(m["setup_s"], 2) if "setup_s" in m else "-",
            ]
        )
        m.update(vs_model_only=rows[-1][3], vs_seed=rows[-1][4], flags=flags)
    table = print_table(
        rows,
        [
            "variant",
            "flags",
            "samples/s (median)",
            "x model-only",
            "x seed-style",
            "peak RSS MB",
            "peak RSS workers MB",
            "setup s (to step 1)",
        ],
    )
    setup = {k: getattr(a, k) for k in ("batch", "steps", "warmup", "repeats", "lora_r")}
    setup.update(data=str(a.data), model="make_tiny_model(image_size=64): hidden 128, 2+2 layers, patch 16")
    write_json(
        a.out,
        {
            "benchmark": "train_throughput",
            "machine": machine_info(),
            "setup": setup,
            "command": " ".join(map(shlex.quote, sys.argv)),
            "results": med,
            "runs": runs,
            "table": table,
        },
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
