"""Does decoding in a worker process beat a worker thread while the 64-px tiny model embeds?

A check of the GIL explanation for the tiny model's embedding bound (benchmarks/RESULTS.md,
fourth session): batches of 64 ``xfdata`` images are decoded one batch ahead (in one thread or one
process) while the main process finishes and embeds the current batch, with torch on 1 or 2
threads; model-only rates on pre-decoded batches are the reference. Prints images/s per setting.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/embed_decode_overlap.py --rounds 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def decode(chunk: list[str], image_processor: Any) -> np.ndarray:
    from cnclip_lora.inputs.images import decode_resized

    return decode_resized(chunk, image_processor, draft=True)


def overlapped(model, image_processor, chunks: list[list[str]], executor: Executor, threads: int) -> float:
    """images/s with batch i+1 decoding in ``executor`` while batch i is finished and embedded."""
    from cnclip_lora.inputs.images import pixel_values_from_uint8
    from cnclip_lora.modeling import get_image_embeds

    torch.set_num_threads(threads)
    work = partial(decode, image_processor=image_processor)
    list(executor.map(work, chunks[:1]))  # start the worker before the clock
    t0 = time.perf_counter()
    futures = [executor.submit(work, chunks[0])]
    with torch.inference_mode():
        for i in range(len(chunks)):
            if i + 1 < len(chunks):
                futures.append(executor.submit(work, chunks[i + 1]))
            arr = futures[i].result()
            get_image_embeds(model, pixel_values_from_uint8(arr, [True] * len(arr), image_processor))
    return sum(map(len, chunks)) / (time.perf_counter() - t0)


def model_only(model, image_processor, chunks: list[list[str]], threads: int) -> float:
    from cnclip_lora.inputs.images import pixel_values_from_uint8
    from cnclip_lora.modeling import get_image_embeds

    torch.set_num_threads(threads)
    batches = [pixel_values_from_uint8(decode(c, image_processor), [True] * len(c), image_processor) for c in chunks]
    with torch.inference_mode():
        get_image_embeds(model, batches[0])
        t0 = time.perf_counter()
        for b in batches:
            get_image_embeds(model, b)
    return sum(map(len, chunks)) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800, help="images (xfdata's, repeated)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()

    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    from cnclip_lora.demo.tiny_model import make_tiny_model

    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="cnclip-overlap-")) / "tiny", image_size=64)
    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    image_processor = ChineseCLIPProcessor.from_pretrained(model_dir).image_processor
    paths = sorted(str(q) for q in (ROOT / "xfdata" / "image").glob("*.jpg"))
    paths = (paths * (a.n // len(paths) + 1))[: a.n]
    chunks = [paths[i : i + a.batch] for i in range(0, len(paths), a.batch)]
    for r in range(a.rounds):
        rates = {f"model_only t{t}": model_only(model, image_processor, chunks, t) for t in (2, 1)}
        for kind, make in (("thread", ThreadPoolExecutor), ("process", ProcessPoolExecutor)):
            for t in (1, 2):
                with make(max_workers=1) as executor:
                    rates[f"{kind} decoder, torch t{t}"] = overlapped(model, image_processor, chunks, executor, t)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()), flush=True)


if __name__ == "__main__":
    main()
