"""The demo data in Chinese-CLIP's layout (``{split}_texts.jsonl`` + ``{split}_imgs.tsv``), with
texts that have several relevant images, so every reader and the many-to-many scoring run offline."""

from __future__ import annotations

import base64
import csv
import json
import os
import random
from pathlib import Path

__all__ = ["write_cnclip_layout"]


def write_cnclip_layout(
    competition_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0, valid_share: float = 0.1,
    second_image_share: float = 0.2,
) -> dict[str, int]:  # fmt: skip
    """Write the competition-layout folder ``competition_dir`` in Chinese-CLIP's layout into ``out_dir``.

    Every distinct title is one text; its images are the images train.csv pairs it with. A share
    ``second_image_share`` of the texts gets a second relevant image: a byte-identical copy under
    its own image id (so it is truly relevant). ``valid_share`` of the training texts (with their
    images) form the ``valid`` split; the test queries and their answers form ``test``.
    """
    src, out = Path(competition_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(src / "train.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    ids: dict[str, int] = {}  # image file name -> image_id

    def image_id(name: str) -> int:
        return ids.setdefault(name, 1000 + len(ids))

    texts: dict[str, list[str]] = {}
    for row in rows:
        texts.setdefault(row["title"], []).append(row["path"])
    titles = list(texts)  # train.csv order (first appearance), so a run over either layout sees the same rows
    n_valid = max(1, int(len(titles) * valid_share)) if valid_share > 0 else 0
    valid = set(rng.sample(titles, n_valid))
    split_titles = {"valid": [t for t in titles if t in valid], "train": [t for t in titles if t not in valid]}
    if not n_valid:
        del split_titles["valid"]
    copies: dict[int, str] = {}  # extra image_id -> the file it copies
    counts: dict[str, int] = {}
    text_id = 1
    for split, chosen in split_titles.items():
        images: dict[int, str] = {}
        with open(out / f"{split}_texts.jsonl", "w", encoding="utf-8") as fh:
            for title in chosen:
                names = list(dict.fromkeys(texts[title]))  # in train.csv order
                relevant = [image_id(n) for n in names]
                for n in names:
                    images[image_id(n)] = n
                if rng.random() < second_image_share:
                    extra = 100_000 + len(copies)
                    copies[extra] = names[0]
                    images[extra] = names[0]
                    relevant.append(extra)
                fh.write(
                    json.dumps({"text_id": text_id, "text": title, "image_ids": relevant}, ensure_ascii=False) + "\n"
                )
                text_id += 1
        _write_tsv(out / f"{split}_imgs.tsv", images, src / "image")
        counts[f"{split}_texts"], counts[f"{split}_images"] = len(chosen), len(images)
    with open(src / "test_query.csv", encoding="utf-8-sig", newline="") as fh:
        queries = [r["title"] for r in csv.DictReader(fh)]
    answers: dict[int, str] = {}
    if (src / "test_answers.csv").is_file():
        with open(src / "test_answers.csv", encoding="utf-8-sig", newline="") as fh:
            answers = {int(r["query"]): r["path"] for r in csv.DictReader(fh)}
    train_names = {r["path"] for r in rows}
    gallery = sorted(p.name for p in (src / "image").iterdir() if p.name not in train_names)
    test_images = {image_id(n): n for n in gallery}
    with open(out / "test_texts.jsonl", "w", encoding="utf-8") as fh:
        for q, title in enumerate(queries):
            relevant = [image_id(answers[q])] if q in answers else []
            fh.write(json.dumps({"text_id": text_id, "text": title, "image_ids": relevant}, ensure_ascii=False) + "\n")
            text_id += 1
    _write_tsv(out / "test_imgs.tsv", test_images, src / "image")
    counts["test_texts"], counts["test_images"] = len(queries), len(test_images)
    return counts


def _write_tsv(path: Path, images: dict[int, str], image_dir: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for number in sorted(images):
            payload = base64.urlsafe_b64encode((image_dir / images[number]).read_bytes()).decode("ascii")
            fh.write(f"{number}\t{payload}\n")
