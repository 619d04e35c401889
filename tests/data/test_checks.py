"""Tests for cnclip_lora.data.checks: each check step on its own, and a check that needs no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_lora.data.checks import DataFolder, check_data, check_train, decode_images, keep_rows, list_images


def test_steps_take_inputs_and_return_results(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=3, n_gallery=2, answers=False)
    (root / "image" / "train_001.jpg").write_bytes(b"not an image")
    (root / "image" / "notes.txt").write_text("hi")
    folder = DataFolder(str(root))
    listing = list_images(folder, skip_bad_rows=False)
    assert "notes.txt" in listing.files and "notes.txt" not in listing.images
    assert [p.kind for p in listing.problems] == ["non-image file"]

    train = check_train(folder, listing)
    assert train.paths == {"train_000.jpg", "train_001.jpg", "train_002.jpg"}
    assert len(train.candidates) == 3 and not train.bad  # nothing decoded yet: the bad file still passes

    errors = decode_images(folder, listing, train, num_workers=1)
    assert sorted(errors) == ["gal_000.jpg", "gal_001.jpg", "train_000.jpg", "train_001.jpg", "train_002.jpg"]
    assert errors["train_001.jpg"] and not errors["train_000.jpg"]

    strict = keep_rows(folder, listing, train, errors, skip_bad_rows=False)
    assert [p for _, p, _ in strict.train] == ["train_000.jpg", "train_002.jpg"]
    assert [(p.kind, p.fatal, p.skippable, p.line) for p in strict.problems] == [("corrupt image", True, True, 3)]
    assert strict.gallery == ["gal_000.jpg", "gal_001.jpg"] and strict.skipped_rows == 0

    lenient = keep_rows(folder, listing, train, errors, skip_bad_rows=True)
    assert lenient.skipped_rows == 1 and not any(p.fatal for p in lenient.problems)
    assert lenient.problems[0].message.endswith("(row skipped)")
    assert not train.bad  # the steps return results; they do not change their inputs


def test_checking_a_folder_never_imports_torch(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, answers=False)
    code = (
        "import sys; from cnclip_lora.data import check_data; r = check_data(sys.argv[1]); "
        "assert r.ok and r.images_decoded, r.summary(); "
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("header", ["name\tfile", "title,path"])
def test_an_unreadable_train_csv_leaves_the_split_and_gallery_unknown(make_dataset_dir, tmp_path, header):
    """No count of what could not be read, and no image called "gallery" when train.csv is unread."""
    root = make_dataset_dir(tmp_path)
    lines = (root / "train.csv").read_text(encoding="utf-8").splitlines()
    (root / "train.csv").write_text("\n".join([header, *lines[1:]]) + "\n", encoding="utf-8")
    report = check_data(root)
    assert not report.ok
    summary = report.summary()
    assert "gallery" not in summary.split("Problems:")[0]
    assert "training pairs: unknown" in summary and "train.csv" in summary.split("Problems:")[1]
