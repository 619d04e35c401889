"""Any `datasets` dataset in: a CSV of paths, an imagefolder with metadata.jsonl, a saved dataset
with an Image feature; columns named as run_clip.py names them; problems named before any model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cnclip_lora.commands import main
from cnclip_lora.data import check_data, load_competition_data
from cnclip_lora.data.hf_source import DatasetSource


def _train_rows(competition: Path) -> list[dict]:
    with open(competition / "train.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def csv_file(demo_dir, tmp_path_factory) -> Path:
    """The demo's training pairs as one CSV with run_clip-style but non-default column names."""
    root = tmp_path_factory.mktemp("csv")
    shutil.copytree(demo_dir / "image", root / "images")
    with open(root / "pairs.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_file", "text"])
        for row in _train_rows(demo_dir):
            writer.writerow([f"images/{row['path']}", row["title"]])
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def imagefolder(demo_dir, tmp_path_factory) -> Path:
    """An imagefolder with train/validation/test splits and metadata.jsonl (file_name, caption)."""
    root = tmp_path_factory.mktemp("imagefolder") / "data"
    rows = _train_rows(demo_dir)
    for split, part in (("train", rows[:40]), ("validation", rows[40:52]), ("test", rows[52:])):
        (root / split).mkdir(parents=True)
        with open(root / split / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for row in part:
                shutil.copy(demo_dir / "image" / row["path"], root / split / row["path"])
                fh.write(json.dumps({"file_name": row["path"], "caption": row["title"]}, ensure_ascii=False) + "\n")
    return root


def test_a_missing_column_is_named_with_the_columns_there(csv_file):
    report = check_data("", dataset=DatasetSource(str(csv_file), image_column="image_file", caption_column="caption"))
    assert not report.ok
    (problem,) = report.fatal_problems
    assert "no column 'caption'" in problem.message and "image_file, text" in problem.message
    assert "--caption_column" in problem.message


def test_check_data_cli_takes_a_dataset(csv_file, capsys):
    argv = ["check-data", "--dataset_name", str(csv_file), "--image_column", "image_file", "--caption_column", "text"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "layout: datasets" in out and "OK" in out


def test_an_imagefolder_reads_its_splits_with_their_images(imagefolder):
    data = load_competition_data("", dataset=DatasetSource(str(imagefolder)))
    assert data.report.ok and data.report.layout == "datasets"
    n_test = len((imagefolder / "test" / "metadata.jsonl").read_text(encoding="utf-8").splitlines())
    assert (len(data.train), len(data.val), len(data.queries)) == (40, 12, n_test)
    assert all(Path(data.image_dir, p).is_file() for p in data.val_gallery["path"])


def test_an_image_feature_with_embedded_bytes(imagefolder, tmp_path):
    """A saved dataset whose images are embedded bytes: written once as files, then the one image path."""
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(imagefolder))
    ds = ds.cast_column("image", datasets.Image(decode=False))
    embedded = ds.map(lambda r: {"image": {"bytes": Path(r["image"]["path"]).read_bytes(), "path": None}})
    embedded.save_to_disk(str(tmp_path / "saved"))
    data = load_competition_data("", dataset=DatasetSource(str(tmp_path / "saved")))
    assert data.report.ok and len(data.train) == 40
    first = Path(data.image_dir, data.train["path"][0])
    assert first.is_file() and first.read_bytes() == Path(ds["train"][0]["image"]["path"]).read_bytes()


def test_three_sources_of_the_same_pairs_train_the_same_adapter(demo_dir, csv_file, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from cnclip_lora.commands.train import train_from_argv
    from cnclip_lora.demo.cnclip_data import write_cnclip_layout

    write_cnclip_layout(demo_dir, tmp_path / "cn", seed=0, valid_share=0, second_image_share=0)
    sources = {
        "competition": ["--data_dir", str(demo_dir)],
        "cnclip": ["--data_dir", str(tmp_path / "cn")],
        "datasets": ["--dataset_name", str(csv_file), "--image_column", "image_file", "--caption_column", "text"],
    }
    adapters = {}
    for name, source in sources.items():
        out = tmp_path / name
        train_from_argv([*source, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                         "--max_steps", "3", "--per_device_train_batch_size", "8", "--lora_r", "4",
                         "--lora_alpha", "8", "--val_size", "0", "--use_cpu", "true", "--report_to", "none",
                         "--dataloader_num_workers", "0", "--seed", "3", "--learning_rate", "1e-3"])  # fmt: skip
        adapters[name] = load_file(out / "adapter_model.safetensors")
    ref = adapters["competition"]
    assert any(not torch.equal(ref[k], torch.zeros_like(ref[k])) for k in ref if "lora_B" in k)  # it trained
    for name in ("cnclip", "datasets"):
        assert adapters[name].keys() == ref.keys()
        for key in ref:
            torch.testing.assert_close(adapters[name][key], ref[key], atol=1e-6, rtol=0, msg=f"{name} {key}")


def test_an_imagefolder_is_recognised_from_data_dir(imagefolder, capsys):
    assert main(["check-data", str(imagefolder)]) == 0
    assert "layout: datasets" in capsys.readouterr().out
