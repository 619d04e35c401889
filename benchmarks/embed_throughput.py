"""Gallery embedding throughput: ``retrieve``'s ``RetrievalModel.encode_images`` vs model-only forward vs seed-style map.

Variants (each in a fresh process, interleaved over ``--repeats``):

* ``model_only[:NAME]``: the limit. ``get_image_embeds`` + L2 normalisation under
  ``torch.inference_mode`` on pixel batches tensorised before the clock starts.
* ``package[:NAME]``: :meth:`cnclip_lora.inference.model.RetrievalModel.encode_images` (over
  :func:`cnclip_lora.inference.embed.embed_images`), exactly as ``retrieve`` calls it (no cache, so
  every image is embedded). Pseudo flags: ``--no_draft``, ``--no_batched_resize``
  (image processor per image), ``--keep_threads`` (embed_images may not lower torch's
  threads), ``--before`` (the first version of ``embed_images``: per-batch
  thread-pool decoding, no read-ahead), ``--threads N``
  (torch threads), ``--decode_threads N`` (its decoding pool).
* ``seed``: a seed-style ``datasets.map``: per batch, PIL open + ``convert("RGB")`` at full
  size, ``processor(images=...)``, ``model.get_image_features``, one process, no threads.

    python benchmarks/embed_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, machine_info, median_by_variant, print_table, run_child, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _flags(flags: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "draft": True,
        "threads": None,
        "decode_threads": None,
        "before": False,
        "keep_threads": False,
    }
    it = iter(flags)
    for f in it:
        if f == "--no_draft":
            out["draft"] = False
        elif f == "--before":
            out["before"] = True
        elif f == "--keep_threads":
            out["keep_threads"] = True
        elif f == "--no_batched_resize":
            import cnclip_lora.inputs.images as images

            images.squash_plan = lambda image_processor: None
        elif f in ("--threads", "--decode_threads"):
            out[f[2:]] = int(next(it))
        else:
            raise SystemExit(f"unknown flag {f}")
    return out


def _setup(a: argparse.Namespace, opts: dict[str, Any]):
    import torch
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    model = ChineseCLIPModel.from_pretrained(a.model).eval()
    processor = ChineseCLIPProcessor.from_pretrained(a.model)
    paths = sorted(str(p) for p in (a.data / "image").glob("*.jpg"))
    paths = (paths * (a.n // max(1, len(paths)) + 1))[: a.n]
    return model, processor, paths


def _embed_images_before(model, image_processor, paths, *, preprocessing, batch_size=64, num_threads=None, **_):
    """``embed_images`` as first written (kept here to measure the change): each batch split over a
    thread pool for decoding, then the forward pass; no read-ahead, torch threads untouched."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import datasets
    import torch

    from cnclip_lora.inference.embed import _map_embed, _normalise
    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.modeling import get_image_embeds

    n_threads = num_threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=n_threads)

    def prep(chunk):
        return preprocess_images(chunk, image_processor, flips=preprocessing.inference_flip, draft=preprocessing.draft)

    @torch.inference_mode()
    def embed_batch(batch):
        chunk = batch["path"]
        step = -(-len(chunk) // n_threads)
        pixels = torch.cat(list(pool.map(prep, [chunk[i : i + step] for i in range(0, len(chunk), step)])))
        return _normalise(get_image_embeds(model, pixels))

    try:
        return _map_embed(
            datasets.Dataset.from_dict({"path": [str(p) for p in paths]}),
            embed_batch,
            batch_size=batch_size,
            cache_dir=None,
            fingerprint=None,
            desc="before",
        )
    finally:
        pool.shutdown()


def child_package(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    from cnclip_lora.adapter.record import Preprocessing
    from cnclip_lora.inference.model import RetrievalModel

    opts = _flags(flags)
    model, processor, paths = _setup(a, opts)
    if opts["keep_threads"]:  # measure read-ahead without embed_images lowering torch's threads
        import torch

        torch.set_num_threads = lambda n: None
    pre = Preprocessing(train_flip="always", draft=opts["draft"])
    kwargs = {"num_threads": opts["decode_threads"]} if opts["decode_threads"] else {}
    if opts["before"]:

        def embed(items):
            return _embed_images_before(
                model, processor.image_processor, items, preprocessing=pre, batch_size=a.batch, **kwargs
            )
    else:
        encoder = RetrievalModel(model, processor, pre, batch_size=a.batch)

        def embed(items):
            return encoder.encode_images(items, cache=False, **kwargs)

    embed(paths[: a.batch])
    t0 = time.perf_counter()
    out = embed(paths)
    span = time.perf_counter() - t0
    assert out.shape[0] == len(paths)
    return {"images_per_s": len(paths) / span}


def child_model_only(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import torch

    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.modeling import get_image_embeds

    opts = _flags(flags)
    model, processor, paths = _setup(a, opts)
    batches = [
        preprocess_images(paths[i : i + a.batch], processor.image_processor, flips=True)
        for i in range(0, len(paths), a.batch)
    ]
    with torch.inference_mode():
        torch.nn.functional.normalize(get_image_embeds(model, batches[0]), dim=-1)
        t0 = time.perf_counter()
        for b in batches:
            torch.nn.functional.normalize(get_image_embeds(model, b), dim=-1).numpy()
        span = time.perf_counter() - t0
    return {"images_per_s": len(paths) / span}


def child_seed(a: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import datasets
    import torch
    from PIL import Image

    model, processor, paths = _setup(a, _flags(flags))

    @torch.no_grad()
    def fn(batch):
        images = [Image.open(p).convert("RGB") for p in batch["path"]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        feats = model.get_image_features(pixel_values=pixels).pooler_output
        return {"embedding": (feats / feats.norm(dim=-1, keepdim=True)).numpy()}

    ds = datasets.Dataset.from_dict({"path": paths})
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds.map(
        fn, batched=True, batch_size=a.batch, remove_columns=["path"], keep_in_memory=True, load_from_cache_file=False
    )
    span = time.perf_counter() - t0
    return {"images_per_s": len(paths) / span}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "xfdata")
    p.add_argument("--n", type=int, default=1000, help="gallery images (the folder's files, repeated if needed)")
    p.add_argument("--batch", type=int, default=64, help="retrieve's default --batch_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--image_size", type=int, default=64, help="the tiny model's input size (its processor resizes to it)"
    )
    p.add_argument("--hidden", type=int, default=128, help="the tiny model's width (heads: hidden / 32)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--package", action="append", default=None, metavar="NAME=FLAGS")
    p.add_argument("--model_only", action="append", default=None, metavar="NAME=FLAGS")
    p.add_argument("--skip_seed", action="store_true")
    p.add_argument("--seed_flags", default="", help="pseudo flags for the seed-style map (e.g. '--threads 1')")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/embed_throughput.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--flags", default="", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        fn = {"package": child_package, "model_only": child_model_only, "seed": child_seed}[a.child.split(":")[0]]
        child_main({"variant": a.child, **fn(a, shlex.split(a.flags))})
        return

    def parse(values, default):
        return dict(v.split("=", 1) if "=" in v else (v, "") for v in (values or default))

    variants = [(f"model_only:{k}", v) for k, v in parse(a.model_only, ["t1=--threads 1", "t2=--threads 2"]).items()]
    variants += [(f"package:{k}", v) for k, v in parse(a.package, ["default="]).items()]
    if not a.skip_seed:
        variants.append(("seed", a.seed_flags))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        from cnclip_lora.demo.tiny_model import make_tiny_model

        model_dir = str(
            make_tiny_model(
                Path(tmp) / "tiny",
                image_size=a.image_size,
                hidden_size=a.hidden,
                num_layers=a.layers,
                num_heads=max(1, a.hidden // 32),
            )
        )
        common = ["--data", str(a.data), "--n", str(a.n), "--batch", str(a.batch), "--model", model_dir]
        for rep in range(a.repeats):
            for name, flags in variants:
                r = run_child(__file__, name, [*common, f"--flags={flags}"])
                print(f"  repeat {rep + 1}: {name:<24} {r['images_per_s']:8.1f} images/s", flush=True)
                runs.append({**r, "flags": flags})
    med = median_by_variant(runs, "images_per_s")
    limit = max(m["images_per_s"] for k, m in med.items() if k.startswith("model_only"))
    seed = med.get("seed", {}).get("images_per_s")
    rows = []
    for name, flags in variants:
        m = med[name]
        s = m["images_per_s"]
        m.update(vs_model_only=round(s / limit, 3), vs_seed=round(s / seed, 3) if seed else None, flags=flags)
        rows.append(
            [name, flags or "-", round(s, 1), m["vs_model_only"], m["vs_seed"] or "-", round(m["peak_rss_mb"])]
        )
    table = print_table(rows, ["variant", "flags", "images/s (median)", "x model-only", "x seed-style", "peak RSS MB"])
    setup = {
        "n_images": a.n,
        "batch": a.batch,
        "repeats": a.repeats,
        "data": str(a.data),
        "model": f"make_tiny_model(image_size={a.image_size}, hidden_size={a.hidden}, num_layers={a.layers}, patch 16)",
        "images": "224-px JPEGs (xfdata/image)",
    }
    write_json(
        a.out,
        {
            "benchmark": "embed_throughput",
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
