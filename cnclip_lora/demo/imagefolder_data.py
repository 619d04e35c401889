"""The demo data as a ``datasets`` imagefolder (``{split}/metadata.jsonl`` with ``file_name`` and
``caption``), the third source every reader and the demo run offline."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

__all__ = ["write_imagefolder"]


def write_imagefolder(
    competition_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0, valid_share: float = 0.1
) -> dict[str, int]:
    """Write the competition-layout folder ``competition_dir`` as an imagefolder in ``out_dir``:
    ``train`` (train.csv's pairs less a held-out share of its images), ``validation`` (those) and
    ``test`` (the answered test queries with their images)."""
    src, out = Path(competition_dir), Path(out_dir)
    with open(src / "train.csv", encoding="utf-8-sig", newline="") as fh:
        rows = [(r["title"], r["path"]) for r in csv.DictReader(fh, delimiter="\t")]
    images = list(dict.fromkeys(p for _, p in rows))
    held = set(random.Random(seed).sample(images, max(1, int(len(images) * valid_share)))) if valid_share else set()
    splits = {"train": [r for r in rows if r[1] not in held], "validation": [r for r in rows if r[1] in held]}
    if (src / "test_answers.csv").is_file():
        with open(src / "test_query.csv", encoding="utf-8-sig", newline="") as fh:
            queries = [r["title"] for r in csv.DictReader(fh)]
        with open(src / "test_answers.csv", encoding="utf-8-sig", newline="") as fh:
            splits["test"] = [(queries[int(r["query"])], r["path"]) for r in csv.DictReader(fh)]
    counts = {}
    for split, pairs in splits.items():
        if not pairs:
            continue
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for title, path in pairs:
                if not (folder / path).exists():
                    shutil.copy(src / "image" / path, folder / path)
                fh.write(json.dumps({"file_name": path, "caption": title}, ensure_ascii=False) + "\n")
        counts[split] = len(pairs)
    return counts
