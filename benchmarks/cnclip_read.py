"""Reading and checking a Chinese-CLIP layout index (jsonl + base64 tsv) without decoding images.

Writes ``--records`` texts (one relevant image each) and as many tiny images into a temporary
folder, then times ``check_data(..., check_images=False)`` twice in fresh processes: cold (every
image's bytes written once into the images cache) and warm (the completed folder reused). Prints
wall time and peak resident memory of each.

Run: ``.venv/bin/python benchmarks/cnclip_read.py --records 1000000``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
from cnclip_lora.data import check_data
start = time.perf_counter()
report = check_data(sys.argv[1], check_images=False, require_queries=False)
took = time.perf_counter() - start
assert report.ok, report.summary()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{took:.1f} {peak:.0f} {report.n_train}")
"""


def write_index(root: Path, n: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    payload = base64.b64encode(buf.getvalue()).decode("ascii")
    with open(root / "train_texts.jsonl", "w", encoding="utf-8") as texts, open(root / "train_imgs.tsv", "w") as imgs:
        for i in range(n):
            record = {"text_id": i, "text": f"红色连衣裙 第{i}号", "image_ids": [i]}
            texts.write(json.dumps(record, ensure_ascii=False) + "\n")
            imgs.write(f"{i}\t{payload}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "hf"
        root.mkdir()
        start = time.perf_counter()
        write_index(root, args.records)
        size = sum(f.stat().st_size for f in root.iterdir())
        print(f"wrote {args.records:,} records ({size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
        env = dict(os.environ, HF_DATASETS_CACHE=str(cache))
        for run in ("cold (images written once)", "warm (cached folder reused)"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(root)], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            took, peak, pairs = out.stdout.split()
            print(f"{run}: {float(took):.1f} s, peak RSS {float(peak):.0f} MiB, {int(pairs):,} training pairs")


if __name__ == "__main__":
    main()
