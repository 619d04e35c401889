"""Chinese-CLIP's dataset layout ({split}_texts.jsonl + {split}_imgs.tsv): read, checked record by
record, trained and scored with several relevant images per text exactly as the official scripts."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_lora.commands import main
from cnclip_lora.data import check_data, load_competition_data
from cnclip_lora.demo.cnclip_data import write_cnclip_layout


@pytest.fixture(scope="module")
def cnclip_dir(tmp_path_factory) -> Path:
    """The demo data in Chinese-CLIP's layout, big enough for the official top-10 files (>= 10 texts
    and images per split), with a third of the texts holding a second relevant image."""
    from cnclip_lora.demo.data import make_demo_data

    root = tmp_path_factory.mktemp("cnclip")
    make_demo_data(root / "competition", seed=2, n_train=160, n_queries=16, n_distractors=10, image_size=32)
    write_cnclip_layout(root / "competition", root / "data", seed=0, second_image_share=0.3)
    return root / "data"


def _texts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_layout_is_read_with_every_relevant_image(cnclip_dir):
    data = load_competition_data(cnclip_dir)
    assert data.report.layout == "chinese-clip" and data.report.ok
    train = _texts(cnclip_dir / "train_texts.jsonl")
    assert len(data.train) == sum(len(t["image_ids"]) for t in train)  # one pair per text and relevant image
    assert sum(len(t["image_ids"]) > 1 for t in train) > 0
    # Rows of one text (or of texts sharing an image) share a group: never each other's negatives.
    groups: dict[int, set[int]] = {}
    for text_id, group in zip(data.train["text_id"], data.train["group"]):
        groups.setdefault(text_id, set()).add(group)
    assert all(len(g) == 1 for g in groups.values())
    valid = _texts(cnclip_dir / "valid_texts.jsonl")
    assert data.val_labels() and [len(x) for x in data.val_labels()] == [len(t["image_ids"]) for t in valid]
    assert len(data.gallery) == len((cnclip_dir / "test_imgs.tsv").read_text().splitlines())
    # Images go through the one image path: real files the image checks decoded.
    assert data.report.images_decoded > 0
    assert all((Path(data.image_dir) / p).is_file() for p in data.gallery["path"][:5])


def _damage(folder: Path, how: str) -> tuple[str, str]:
    """Damage a copy in one way; returns (file name, expected words)."""
    texts, imgs = folder / "valid_texts.jsonl", folder / "valid_imgs.tsv"
    lines = texts.read_text(encoding="utf-8").splitlines()
    rows = imgs.read_text(encoding="utf-8").splitlines()
    if how == "truncated base64":
        image_id, payload = rows[0].split("\t")
        rows[0] = f"{image_id}\t{payload[:-3]}"
        imgs.write_text("\n".join(rows) + "\n")
        return imgs.name, "base64 is damaged"
    if how == "not an image":
        rows[0] = rows[0].split("\t")[0] + "\t" + base64.b64encode(b"hello, not a jpeg").decode()
        imgs.write_text("\n".join(rows) + "\n")
        return imgs.name, "not an image file"
    obj = json.loads(lines[0])
    if how == "no image_ids":
        del obj["image_ids"]
        words = "no 'image_ids' key"
    elif how == "unknown image_id":
        obj["image_ids"] = [987654321]
        words = "image_id 987654321 has no usable image"
    elif how == "string text_id":
        obj["text_id"] = "7"
        words = "is not an integer"
    elif how == "duplicate text_id":
        obj["text_id"] = json.loads(lines[1])["text_id"]
        words = "is given twice"
    else:  # not JSON
        lines[0] = lines[0][:-5]
        texts.write_text("\n".join(lines) + "\n")
        return texts.name, "not a JSON object"
    lines[0] = json.dumps(obj, ensure_ascii=False)
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts.name, words


CASES = ["truncated base64", "not an image", "no image_ids", "unknown image_id", "string text_id",
         "duplicate text_id", "not JSON"]  # fmt: skip


@pytest.mark.parametrize("how", CASES)
def test_damaged_records_are_named_with_file_and_line(cnclip_dir, tmp_path, how):
    folder = tmp_path / "d"
    shutil.copytree(cnclip_dir, folder)
    name, words = _damage(folder, how)
    report = check_data(folder)
    assert not report.ok
    bad = [p for p in report.fatal_problems if Path(p.file).name == name]
    assert len(bad) == 1 and words in bad[0].message and bad[0].line in (1, 2), report.summary()
    skipped = check_data(folder, skip_bad_rows=True)  # skipped and counted, never silently
    assert skipped.ok and any(words in p.message and "(skipped)" in p.message for p in skipped.problems)


def test_check_data_cli_names_the_layout(cnclip_dir, capsys):
    assert main(["check-data", str(cnclip_dir)]) == 0
    assert "layout: chinese-clip" in capsys.readouterr().out


def _official(module: str, golden: Path, predictions: Path) -> list[float]:
    """[mean recall, R@1, R@5, R@10] from the installed official script's compute_score."""
    code = (
        f"import json, sys; from cn_clip.eval.{module} import compute_score; "
        "print(json.dumps(compute_score(sys.argv[1], sys.argv[2])))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(golden), str(predictions)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("split", ["valid", "test"])  # the layout's own split names
def test_evaluate_equals_the_official_evaluation_scripts(cnclip_dir, tiny_model_dir, tmp_path, split, capsys):
    """Both directions, several relevant images per text: the printed recalls are the official ones."""
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    t2i, i2t = tmp_path / "t2i.jsonl", tmp_path / "i2t.jsonl"
    metrics = evaluate_retrieval(
        EvaluateArguments(
            model_name_or_path=str(tiny_model_dir),
            data_dir=str(cnclip_dir),
            split=split,
            cache_dir="",
            predictions_output=str(t2i),
            i2t_predictions_output=str(i2t),
        )  # fmt: skip
    )
    golden = cnclip_dir / f"{split}_texts.jsonl"
    split = "val" if split == "valid" else split  # the metrics' prefix
    mean, r1, r5, r10 = _official("evaluation", golden, t2i)
    assert [metrics[f"{split}_t2i_{k}"] for k in ("R@1", "R@5", "R@10", "MR")] == pytest.approx(
        [r1, r5, r10, mean], abs=1e-4
    )  # printed to 4 places
    # image-to-text: the official annotation transform, then evaluation_tr
    tr = tmp_path / "golden.jsonl"
    shutil.copy(golden, tr)
    subprocess.run([sys.executable, "-m", "cn_clip.eval.transform_ir_annotation_to_tr", "--input", str(tr)],
                   check=True, capture_output=True)  # fmt: skip
    mean, r1, r5, r10 = _official("evaluation_tr", tmp_path / "golden.tr.jsonl", i2t)
    assert [metrics[f"{split}_i2t_{k}"] for k in ("R@1", "R@5", "R@10", "MR")] == pytest.approx(
        [r1, r5, r10, mean], abs=1e-4
    )  # printed to 4 places


def test_the_same_pairs_in_either_layout_train_the_same_adapter(demo_dir, tiny_model_dir, tmp_path):
    """train.csv + image/ and the same pairs as jsonl + base64 tsv: same rows, same order, same seed,
    so the same adapter (the images are the same bytes, decoded by the one image path)."""
    import torch
    from safetensors.torch import load_file

    from cnclip_lora.commands.train import train_from_argv

    write_cnclip_layout(demo_dir, tmp_path / "cn", seed=0, valid_share=0, second_image_share=0)
    adapters = []
    for name, data in (("competition", demo_dir), ("cnclip", tmp_path / "cn")):
        out = tmp_path / name
        train_from_argv(["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(data), "--output_dir",
                         str(out), "--max_steps", "3", "--per_device_train_batch_size", "8", "--lora_r", "4",
                         "--lora_alpha", "8", "--val_size", "0", "--use_cpu", "true", "--report_to", "none",
                         "--dataloader_num_workers", "0", "--seed", "3", "--learning_rate", "1e-3"])  # fmt: skip
        adapters.append(load_file(out / "adapter_model.safetensors"))
    first, second = adapters
    assert first.keys() == second.keys() and first
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=1e-6, rtol=0, msg=key)
    assert any(not torch.equal(first[k], torch.zeros_like(first[k])) for k in first if "lora_B" in k)  # it trained


@pytest.fixture(scope="module")
def lmdb_dir(cnclip_dir, tmp_path_factory) -> Path:
    """The same data as the official script builds it: ``lmdb/{split}/pairs`` and ``imgs`` only."""
    pytest.importorskip("lmdb", reason="lmdb not installed: pip install 'cnclip-lora[lmdb]'")
    work = tmp_path_factory.mktemp("lmdb-build")
    for f in cnclip_dir.iterdir():
        shutil.copy(f, work / f.name)
    subprocess.run([sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(work),
                    "--splits", "train,valid,test"], check=True, capture_output=True)  # fmt: skip
    only = tmp_path_factory.mktemp("lmdb") / "data"
    only.mkdir()
    shutil.move(work / "lmdb", only / "lmdb")
    return only


def _names(data, column_data):
    return [p.split("/", 1)[1] for p in column_data]  # without the cache folder's key


def test_the_official_lmdb_reads_as_its_jsonl_and_tsv(cnclip_dir, lmdb_dir):
    a, b = load_competition_data(cnclip_dir), load_competition_data(lmdb_dir)
    assert b.report.ok and b.report.layout == "chinese-clip"
    assert list(a.train["title"]) == list(b.train["title"]) and list(a.train["group"]) == list(b.train["group"])
    assert _names(a, a.train["path"]) == _names(b, b.train["path"])
    assert a.val_labels() == b.val_labels() and list(a.val["title"]) == list(b.val["title"])
    assert _names(a, a.gallery["path"]) == _names(b, b.gallery["path"])
    assert a.answer_labels() == b.answer_labels()


def _put_pair(lmdb_folder: Path, blob: bytes) -> None:
    import lmdb

    env = lmdb.open(str(lmdb_folder / "lmdb" / "valid" / "pairs"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(b"0", blob)
    env.close()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("record", ["runs code", "a dict", "a short tuple"])
def test_an_lmdb_record_that_is_not_a_plain_tuple_is_refused(lmdb_dir, tmp_path, record):
    import pickle

    folder = tmp_path / "data"
    shutil.copytree(lmdb_dir, folder)
    marker = tmp_path / "pwned"
    blob = {
        "runs code": pickle.dumps(_RunsCode(str(marker))),
        "a dict": pickle.dumps({"image_id": 1, "text_id": 2, "text": "x"}),
        "a short tuple": pickle.dumps((1, 2)),
    }[record]
    _put_pair(folder, blob)
    report = check_data(folder)
    assert not marker.exists()  # the record never ran
    bad = [p for p in report.fatal_problems if "lmdb/valid/pairs" in p.file]
    assert len(bad) == 1 and "record 0" in bad[0].message, report.summary()
    assert ("refused" in bad[0].message) if record == "runs code" else ("tuple" in bad[0].message)


def test_every_verb_takes_the_layout(cnclip_dir, tiny_model_dir, tmp_path, capsys):
    """retrieve (top-k by the layout's image ids), report (held-out and test sections) and the
    service (its gallery served as files) over the same folder."""
    import pandas as pd

    from cnclip_lora.retrieve.arguments import ServeArguments
    from cnclip_lora.retrieve.serve import _safe_image_path, load_engine

    model = ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(cnclip_dir), "--cache_dir", ""]
    topk = tmp_path / "topk.csv"
    assert main(["retrieve", *model, "--topk_output", str(topk), "--top_k", "3"]) == 0
    image_ids = {int(line.split("\t")[0]) for line in (cnclip_dir / "test_imgs.tsv").read_text().splitlines()}
    assert set(pd.read_csv(topk)["path"]) <= image_ids
    assert "test_t2i_MR" in capsys.readouterr().out  # the test texts carry image_ids: scored
    page = tmp_path / "r.html"
    assert main(["report", *model, "--output", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert '<section id="val">' in html and '<section id="test">' in html
    engine = load_engine(
        ServeArguments(model_name_or_path=str(tiny_model_dir), data_dir=str(cnclip_dir), cache_dir="")
    )
    assert len(engine.names) == len(image_ids) and all(_safe_image_path(engine, n) for n in engine.names[:5])


def test_texts_sharing_an_image_are_one_group(tmp_path):
    """Group = connected texts and images: 1-10, 2-10 (shared image), 3-11/12, 4-12 (chained), 5-13."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    payload = base64.b64encode(buf.getvalue()).decode()
    links = {1: [10], 2: [10], 3: [11, 12], 4: [12], 5: [13]}
    texts = "".join(
        json.dumps({"text_id": t, "text": f"标题{t}", "image_ids": ids}) + "\n" for t, ids in links.items()
    )
    (tmp_path / "train_texts.jsonl").write_text(texts, encoding="utf-8")
    (tmp_path / "train_imgs.tsv").write_text("".join(f"{i}\t{payload}\n" for i in (10, 11, 12, 13)))
    from cnclip_lora.data.cnclip_layout import load_cnclip_data

    data = load_cnclip_data(tmp_path, require_queries=False, image_cache=tmp_path / "cache")
    group = dict(zip(data.train["text_id"], data.train["group"]))
    assert group[1] == group[2] and group[3] == group[4] and len({group[1], group[3], group[5]}) == 3
