"""CPU embedding throughput: onnxruntime over an ``export-onnx`` folder vs the merged PyTorch model.

Variants (each in a fresh process, interleaved over ``--repeats``), per tower:

* ``torch:text`` / ``torch:image``: :meth:`cnclip_lora.inference.model.RetrievalModel.encode_texts` /
  ``encode_images`` on the merged PyTorch model, exactly as ``retrieve`` calls them (no cache).
* ``onnx:text`` / ``onnx:image``: the same methods with ``backend="onnx"``, i.e. on
  :class:`cnclip_lora.inference.onnx_engine.OnnxChineseCLIP` (what ``retrieve --backend onnx`` runs).
* ``--model_only``: adds ``torch_model:*`` / ``onnx_model:*``, the engines alone on inputs
  tokenised / preprocessed before the clock starts.

Both engines get the same number of threads (torch's; onnxruntime's intra-op pool is set to it).
The model is a random ``make_tiny_model`` (default: 224 px, patch 16, hidden 256, 4+4 layers), with a
LoRA adapter merged at export time, as a fine-tuned model would be.

    python benchmarks/onnx_embed.py --repeats 3
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


def _titles(data: Path, n: int) -> list[str]:
    import pandas as pd

    titles = list(pd.read_csv(data / "train.csv", sep="\t")["title"])
    return (titles * (n // max(1, len(titles)) + 1))[:n]


def _paths(data: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in (data / "image").glob("*.jpg"))
    return (paths * (n // max(1, len(paths)) + 1))[:n]


def _load(a: argparse.Namespace, backend: str):
    from cnclip_lora.inference.model import RetrievalModel

    if backend == "onnx":
        return RetrievalModel.from_pretrained(a.export, backend="onnx", device="cpu", batch_size=a.batch)
    return RetrievalModel.from_pretrained(a.model, a.adapter, device="cpu", batch_size=a.batch)


def child(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.inputs.text import tokenize_titles
    from cnclip_lora.modeling import get_image_embeds, get_text_embeds

    kind, tower = a.child.split(":")
    backend = kind.split("_")[0]
    encoder = _load(a, backend)
    model, processor, prep = encoder.model, encoder.processor, encoder.preprocessing
    items = _titles(a.data, a.n_titles) if tower == "text" else _paths(a.data, a.n_images)
    if kind.endswith("_model"):  # engine only: inputs ready before the clock starts
        chunks = [items[i : i + a.batch] for i in range(0, len(items), a.batch)]
        if tower == "text":
            inputs = [
                tokenize_titles(c, processor.tokenizer, prep.max_length, prep.title_normalization) for c in chunks
            ]
            step = lambda x: get_text_embeds(model, **x)  # noqa: E731
        else:
            inputs = [
                preprocess_images(c, processor.image_processor, flips=prep.inference_flip, draft=prep.draft)
                for c in chunks
            ]
            step = lambda x: get_image_embeds(model, x)  # noqa: E731
        with torch.inference_mode():
            step(inputs[0])
            t0 = time.perf_counter()
            for x in inputs:
                torch.nn.functional.normalize(step(x), dim=-1).numpy()
            span = time.perf_counter() - t0
    else:
        if tower == "text":
            run = lambda xs: encoder.encode_texts(xs, batch_size=a.batch, cache=False)  # noqa: E731
        else:
            run = lambda xs: encoder.encode_images(xs, batch_size=a.batch, cache=False)  # noqa: E731
        import datasets

        datasets.disable_progress_bars()
        run(items[: a.batch])
        t0 = time.perf_counter()
        out = run(items)
        span = time.perf_counter() - t0
        assert out.shape[0] == len(items)
    return {"items_per_s": len(items) / span, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "xfdata")
    p.add_argument("--n_titles", type=int, default=512)
    p.add_argument("--n_images", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="retrieve's default --batch_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--hidden", type=int, default=256, help="the tiny model's width (heads: hidden / 32)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--model_only", action="store_true", help="also time the engines alone")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/onnx_embed.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        child_main({"variant": a.child, **child(a)})
        return

    kinds = ["torch", "onnx"] + (["torch_model", "onnx_model"] if a.model_only else [])
    variants = [f"{k}:{t}" for t in ("text", "image") for k in kinds]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir, export_dir = _prepare(Path(tmp), a)
        common = [
            "--data",
            str(a.data),
            "--n_titles",
            str(a.n_titles),
            "--n_images",
            str(a.n_images),
            "--batch",
            str(a.batch),
            "--model",
            model_dir,
            "--adapter",
            adapter_dir,
            "--export",
            export_dir,
        ]
        for rep in range(a.repeats):
            for name in variants:
                r = run_child(__file__, name, common)
                print(f"  repeat {rep + 1}: {name:<18} {r['items_per_s']:9.1f} items/s", flush=True)
                runs.append(r)
    med = median_by_variant(runs, "items_per_s")
    rows = []
    for name in variants:
        kind, tower = name.split(":")
        ref = med[f"{kind.replace('onnx', 'torch')}:{tower}"]["items_per_s"]
        s = med[name]["items_per_s"]
        med[name]["vs_torch"] = round(s / ref, 3)
        rows.append([name, round(s, 1), med[name]["vs_torch"], round(med[name]["peak_rss_mb"])])
    table = print_table(rows, ["variant", "items/s (median)", "x torch", "peak RSS MB"])
    setup = {
        "n_titles": a.n_titles,
        "n_images": a.n_images,
        "batch": a.batch,
        "repeats": a.repeats,
        "model": f"make_tiny_model(image_size={a.image_size}, hidden_size={a.hidden}, num_layers={a.layers}, "
        "patch 16) + merged LoRA r=8",
        "data": str(a.data),
    }
    write_json(
        a.out,
        {
            "benchmark": "onnx_embed",
            "machine": machine_info(),
            "setup": setup,
            "command": " ".join(map(shlex.quote, sys.argv)),
            "results": med,
            "runs": runs,
            "table": table,
        },
    )
    print(f"wrote {a.out}")


def _prepare(tmp: Path, a: argparse.Namespace) -> tuple[str, str, str]:
    """Tiny model, a random (non-zero) LoRA adapter on both towers, and its ONNX export."""
    import torch

    from cnclip_lora.adapter.record import Preprocessing, RunRecord
    from cnclip_lora.demo.tiny_model import make_tiny_model
    from cnclip_lora.modeling import apply_lora, load_model_and_processor
    from cnclip_lora.retrieve.export_onnx import export_onnx

    model_dir = make_tiny_model(
        tmp / "tiny",
        image_size=a.image_size,
        hidden_size=a.hidden,
        num_layers=a.layers,
        num_heads=max(1, a.hidden // 32),
    )
    model, processor = load_model_and_processor(str(model_dir))
    peft_model = apply_lora(model, r=8, alpha=16)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter_dir = tmp / "adapter"
    peft_model.save_pretrained(adapter_dir)
    RunRecord(Preprocessing(train_flip="none")).save(adapter_dir)
    export_dir = tmp / "onnx"
    export_onnx(str(model_dir), export_dir, str(adapter_dir))
    return str(model_dir), str(adapter_dir), str(export_dir)


if __name__ == "__main__":
    main()
