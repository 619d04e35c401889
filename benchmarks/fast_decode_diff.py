"""What ``--fast_decode`` changes: pixel and image-embedding difference against the exact path, and decode speed.

    python benchmarks/fast_decode_diff.py [--n_per_size 8] [--workdir /tmp/cnclip-fast-decode]

Writes JPEGs (quality 90) of product-photo sizes, 448 to 1500 px, half of them sharp-edged (thin lines,
stripes, small print-like strokes: where decoding at reduced scale differs most), half the demo's smooth
drawings upscaled. Each image goes through the exact path (full-resolution decode, bicubic squash to
224) and through ``--fast_decode`` (JPEG draft decode at 1/2-1/8 scale, then the same squash), and both
pixel tensors through a randomly initialised model of ViT-B/16's shape (224 px, patch 16, 12 layers, width
768). Random weights are what can be built offline; the figures are a measure of how far the inputs move,
not of a trained model's accuracy. Reports the largest and mean absolute pixel difference (in normalised
units), the lowest and mean cosine between the two embeddings of an image, and the decode-time ratio
measured in the same run.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json  # noqa: E402

SIZES = [(448, 448), (750, 1000), (1000, 750), (1200, 900), (1500, 1500)]


def _sharp_image(size: tuple[int, int], rng: random.Random):
    from PIL import Image, ImageDraw

    w, h = size
    im = Image.new("RGB", size, tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(12):  # flat blocks with hard edges
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.rectangle(
            [x0, y0, x0 + rng.randrange(20, w // 3), y0 + rng.randrange(20, h // 3)],
            fill=tuple(rng.randrange(256) for _ in range(3)),
        )
    for y in range(0, h, rng.randrange(4, 9)):  # fine stripes over part of the image
        draw.line([(0, y), (w // 2, y)], fill=(20, 20, 20), width=1)
    for _ in range(60):  # print-like strokes, 1-3 px
        x, y = rng.randrange(w), rng.randrange(h)
        draw.line(
            [(x, y), (x + rng.randrange(-30, 30), y + rng.randrange(-30, 30))],
            fill=(0, 0, 0),
            width=rng.randrange(1, 4),
        )
    return im


def write_images(workdir: Path, n_per_size: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    from cnclip_lora.demo.data import make_demo_data

    rng = random.Random(seed)
    demo = workdir / "demo-src"
    if not (demo / "train.csv").is_file():
        make_demo_data(demo, seed=seed, n_train=n_per_size * len(SIZES), n_queries=2, n_distractors=0, image_size=224)
    smooth = sorted((demo / "image").glob("*.jpg"))
    paths = []
    for s, size in enumerate(SIZES):
        for i in range(n_per_size):
            if i % 2:
                im = Image.open(smooth[(s * n_per_size + i) % len(smooth)]).convert("RGB").resize(size, Image.BICUBIC)
            else:
                im = _sharp_image(size, rng)
            path = workdir / f"img-{size[0]}x{size[1]}-{i}.jpg"
            im.save(path, quality=90)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_per_size", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "fast_decode_diff.json"))
    args = parser.parse_args()

    import torch
    from transformers import AutoImageProcessor, ChineseCLIPModel

    from cnclip_lora.demo.tiny_model import make_tiny_model
    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.modeling import get_image_embeds

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cnclip-fast-decode-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = write_images(workdir, args.n_per_size)
    model_dir = workdir / "vit-b16-random"
    if not (model_dir / "config.json").is_file():
        make_tiny_model(
            model_dir,
            seed=0,
            image_size=224,
            patch_size=16,
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            projection_dim=512,
        )
    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")

    timings = {}
    pixels = {}
    for draft in (False, True, False, True):  # interleaved: a noisy neighbour hits both alike
        start = time.perf_counter()
        pixels[draft] = preprocess_images(paths, processor, draft=draft)
        timings.setdefault(draft, []).append(time.perf_counter() - start)
    with torch.inference_mode():
        emb = {d: torch.nn.functional.normalize(get_image_embeds(model, p), dim=-1) for d, p in pixels.items()}
    diff = (pixels[True] - pixels[False]).abs()
    cos = (emb[True] * emb[False]).sum(-1)
    rows = []
    results = []
    for s, size in enumerate(SIZES):
        sl = slice(s * args.n_per_size, (s + 1) * args.n_per_size)
        r = {
            "size": f"{size[0]}x{size[1]}",
            "max_abs_pixel": diff[sl].amax().item(),
            "mean_abs_pixel": diff[sl].mean().item(),
            "min_cosine": cos[sl].min().item(),
            "mean_cosine": cos[sl].mean().item(),
        }
        results.append(r)
        rows.append(
            [
                r["size"],
                f"{r['max_abs_pixel']:.3f}",
                f"{r['mean_abs_pixel']:.4f}",
                f"{r['min_cosine']:.4f}",
                f"{r['mean_cosine']:.4f}",
            ]
        )
    speedup = min(timings[False]) / min(timings[True])
    print_table(rows, ["image size", "max |dpixel|", "mean |dpixel|", "min cosine", "mean cosine"])
    print(f"\ndecode + squash of {len(paths)} images: exact / fast_decode time = {speedup:.2f}x")
    write_json(
        Path(args.output),
        {
            "machine": machine_info(),
            "command": " ".join(sys.argv),
            "images": len(paths),
            "decode_speedup": speedup,
            "by_size": results,
        },
    )


if __name__ == "__main__":
    main()
