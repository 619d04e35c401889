"""Tests for cnclip_lora.data end to end: check_data and load_competition_data on whole folders."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from cnclip_lora.data import (
    DataReport,
    Problem,
    check_data,
    load_competition_data,
    normalize_title,
)
from cnclip_lora.errors import ConfigError, DataError


def _write_train(root, rows, header="title\tpath", encoding="utf-8"):
    text = "\n".join([header] + [f"{t}\t{p}" for t, p in rows]) + "\n"
    (root / "train.csv").write_text(text, encoding=encoding)


def _jpeg_bytes(size=(64, 48), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fatal_kinds(report: DataReport) -> set[str]:
    return {p.kind for p in report.problems if p.fatal}


# ------------------------------------------------------------------------- happy path


def test_load_builds_consistent_splits(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=10, captions_per_image=2, n_gallery=5, n_queries=4)
    data = load_competition_data(root, val_size=0.2, seed=0)

    assert data.report.ok and data.image_dir == root / "image"
    assert set(data.train.column_names) == {"title", "path", "row"}
    assert set(data.val.column_names) == {"title", "path", "row", "label"}
    assert len(data.train) + len(data.val) == 20
    held = set(data.val["path"])
    assert len(held) == 2 and not held & set(data.train["path"])  # grouped by image
    assert len(data.val) == 4  # both captions of each held-out image
    assert list(data.gallery["path"]) == [f"gal_{j:03d}.jpg" for j in range(5)]
    val_gallery = list(data.val_gallery["path"])
    assert len(val_gallery) == len(set(val_gallery)) == 7
    assert held <= set(val_gallery) and set(data.gallery["path"]) <= set(val_gallery)
    for row in data.val:
        assert val_gallery[row["label"]] == row["path"]
    assert list(data.queries["query"]) == [0, 1, 2, 3]
    assert data.queries[0]["title"] == "查询0号女装长袖T恤"
    assert list(data.sample_submit.columns) == ["title", "path"] and len(data.sample_submit) == 4
    gallery = list(data.gallery["path"])
    assert [gallery[i] for i in data.answers["label"]] == list(data.answers["path"])
    report = data.report
    assert (report.n_train, report.n_val, report.n_gallery, report.n_val_gallery) == (16, 4, 5, 7)
    assert report.multi_caption_images == 10 and report.images_decoded == 15


def test_rows_point_back_to_train_csv(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=5)
    data = load_competition_data(root, val_size=0)
    lines = (root / "train.csv").read_text(encoding="utf-8").splitlines()
    for row in data.train:
        title, path = lines[row["row"] + 1].split("\t")
        assert (title.strip(), path) == (row["title"], row["path"])


def test_check_data_collects_without_raising(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "test_query.csv").unlink()
    _write_train(root, [("", "train_000.jpg"), ("好标题", "nope.jpg")])
    report = check_data(root)
    assert not report.ok
    assert {"missing file", "empty title", "missing image"} <= _fatal_kinds(report)
    summary = report.summary()
    assert "NOT OK" in summary and "empty title (1)" in summary and "missing image (1)" in summary
    assert "--skip_bad_rows" in summary


def test_summary_reports_counts(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=8, captions_per_image=2, n_gallery=3)
    (root / "image" / ".DS_Store").write_bytes(b"\0\1")
    report = check_data(root, val_size=2)
    summary = report.summary()
    assert report.ok and summary.rstrip().endswith("OK")
    assert "training pairs:" in summary and "12 (6 images)" in summary
    assert "validation pairs:" in summary and "4 (2 held-out images)" in summary
    assert "test gallery:" in summary and "3 images" in summary
    assert "multi-caption images: 8" in summary
    assert "[note] non-image file (1)" in summary


def test_problem_str_names_file_and_line():
    assert str(Problem("xfdata/train.csv", 7, "empty title", True)) == "xfdata/train.csv, line 7: empty title"
    assert str(Problem("xfdata/image", None, "not found", True)) == "xfdata/image: not found"


# ------------------------------------------------------------------ files and columns


@pytest.mark.parametrize(
    "remove, match",
    [
        ("train.csv", r"xfdata/train\.csv: not found; it must hold the training pairs"),
        ("test_query.csv", r"xfdata/test_query\.csv: not found; it must hold the test queries"),
        ("image", r"xfdata/image: image folder not found"),
    ],
)
def test_missing_file_is_fatal(tmp_path, make_dataset_dir, remove, match):
    root = make_dataset_dir(tmp_path)
    target = root / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DataError, match=match):
        load_competition_data(tmp_path / "xfdata")


def test_all_problems_raised_at_once(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "test_query.csv").unlink()
    _write_train(root, [("", "train_000.jpg"), ("标题", "../etc/passwd")])
    with pytest.raises(DataError) as info:
        load_competition_data(root)
    kinds = {p.kind for p in info.value.problems}
    assert kinds == {"missing file", "empty title", "bad path"}
    assert all(p.fatal for p in info.value.problems)
    assert "3 problem(s) must be fixed" in str(info.value)


def test_optional_files_may_be_absent(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    data = load_competition_data(root)
    assert data.sample_submit is None and data.answers is None
    (root / "test_query.csv").unlink()
    with pytest.raises(DataError, match="test_query.csv: not found"):
        load_competition_data(root)
    data = load_competition_data(root, require_queries=False)
    assert len(data.queries) == 0 and data.queries.column_names == ["title", "query"]


def test_missing_column(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    _write_train(root, [("标题", "train_000.jpg")], header="title\tfile")
    with pytest.raises(DataError, match=r"line 1: missing column `path`: the header is `title<TAB>file`"):
        load_competition_data(root)


def test_comma_separated_train_csv(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "train.csv").write_text("title,path\n标题,train_000.jpg\n", encoding="utf-8")
    match = (
        r"train\.csv must be TAB-separated with header `title<TAB>path`; "
        r"found a comma-separated header `title,path`"
    )
    with pytest.raises(DataError, match=match):
        load_competition_data(root)


def test_tab_separated_test_query(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    (root / "test_query.csv").write_text("id\ttitle\n0\t查询一\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test_query\.csv must be comma-separated with header `title`; found a TAB"):
        load_competition_data(root)


def test_test_query_extra_columns_ignored(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    (root / "test_query.csv").write_text('id,title,note\n7,"红色,长袖",x\n8,蓝色,y\n', encoding="utf-8")
    data = load_competition_data(root)
    assert list(data.queries["title"]) == ["红色,长袖", "蓝色"]
    assert data.queries.column_names == ["title", "query"]


def test_malformed_rows_name_their_line(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "train.csv").write_text("title\tpath\n好\ttrain_000.jpg\n坏\t标题\ttrain_001.jpg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv, line 3: 3 fields but the header `title<TAB>path` has 2"):
        load_competition_data(root)
    (root / "train.csv").write_text('title\tpath\n"坏标题\ttrain_000.jpg\n好\ttrain_001.jpg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: a field spans lines 2-3: probably an unmatched double quote"):
        load_competition_data(root)


# ---------------------------------------------------------------------- row problems


def test_empty_and_whitespace_titles(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    _write_train(root, [("好标题", "train_000.jpg"), ("", "train_001.jpg"), (" \u3000 ", "train_002.jpg")])
    report = check_data(root)
    empty = [p for p in report.problems if p.kind == "empty title"]
    assert [p.line for p in empty] == [3, 4]
    assert str(empty[0]).endswith("xfdata/train.csv, line 3: empty title; write the product title or delete the row")


def test_duplicate_rows_fatal_but_multi_captions_allowed(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    _write_train(
        root,
        [
            ("标题甲", "train_000.jpg"),
            ("标题乙", "train_000.jpg"),
            ("标题　甲", "train_000.jpg"),
            ("标题丙", "train_001.jpg"),
        ],
    )
    # "标题　甲" normalises (ideographic space) to "标题 甲", not "标题甲": not a duplicate
    report = check_data(root, val_size=0)
    assert report.ok and report.multi_caption_images == 1 and report.n_train == 4
    _write_train(
        root,
        [
            ("标题甲", "train_000.jpg"),
            ("标题乙", "train_000.jpg"),
            ("ＡＢ", "train_001.jpg"),
            ("AB", "train_001.jpg"),
        ],
    )
    with pytest.raises(DataError, match=r"line 5: duplicate of line 4 \(same title and path\)"):
        load_competition_data(root)


@pytest.mark.parametrize(
    "path, match",
    [
        ("/etc/passwd", r"path `/etc/passwd` is absolute"),
        ("../train.csv", r"path `\.\./train\.csv` leaves image/"),
        ("sub/../../x.jpg", r"path `sub/\.\./\.\./x\.jpg` leaves image/"),
        ("C:\\data\\a.jpg", r"path `C:\\data\\a\.jpg` is absolute"),
        ("  ", r"empty path"),
    ],
)
def test_paths_must_stay_inside_image_dir(tmp_path, make_dataset_dir, path, match):
    root = make_dataset_dir(tmp_path)
    _write_train(root, [("标题", "train_000.jpg"), ("标题二", path)])
    with pytest.raises(DataError, match=r"train\.csv, line 3: " + match):
        load_competition_data(root)


def test_subdirectory_paths_inside_image_dir_are_fine(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "sub").mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "image" / "sub" / "a.png")
    _write_train(root, [("标题", "train_000.jpg"), ("标题二", "./sub\\a.png")])
    data = load_competition_data(root, val_size=0)
    assert "sub/a.png" in data.train["path"]
    assert "sub/a.png" not in data.gallery["path"]


def test_missing_images_get_hints(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    _write_train(root, [("一", "image/train_000.jpg"), ("二", "TRAIN_001.JPG"), ("三", "train_002"), ("四", "x.jpg")])
    with pytest.raises(DataError) as info:
        load_competition_data(root)
    text = str(info.value)
    assert "line 2: image `image/train_000.jpg` not found" in text and "write `train_000.jpg`" in text
    assert "did you mean `train_001.jpg`? (file names are case-sensitive)" in text
    assert "did you mean `train_002.jpg`?" in text
    assert "line 5: image `x.jpg` not found in " in text


def test_truncated_jpeg_is_caught_although_verify_passes(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    data = _jpeg_bytes((128, 96))
    (root / "image" / "train_001.jpg").write_bytes(data[: len(data) // 2])
    Image.open(root / "image" / "train_001.jpg").verify()  # the cheap check is fooled
    with pytest.raises(
        DataError,
        match=r"train\.csv, line 3: image `train_001\.jpg` cannot be read \(image file is truncated",
    ):
        load_competition_data(root)
    assert check_data(root, check_images=False).ok  # existence only


def test_non_image_bytes_and_corrupt_gallery_image(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "train_002.jpg").write_bytes(b"<html>not an image</html>")
    (root / "image" / "gal_001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = check_data(root)
    corrupt = [p for p in report.problems if p.kind == "corrupt image"]
    assert len(corrupt) == 2 and all(p.fatal for p in corrupt)
    assert "train_002.jpg` cannot be read (not an image Pillow can read)" in str(corrupt[0])
    assert str(corrupt[1]).startswith(os.path.join(str(root), "image", "gal_001.jpg") + ": cannot be read")


def test_thread_pool_and_serial_decoding_agree(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=12, n_gallery=12)
    (root / "image" / "gal_003.jpg").write_bytes(_jpeg_bytes()[:300])
    serial = check_data(root, num_workers=1)
    threaded = check_data(root, num_workers=4)
    assert [str(p) for p in serial.problems] == [str(p) for p in threaded.problems]
    assert serial.images_decoded == threaded.images_decoded == 24


# ------------------------------------------------------------- submit and answers


def test_sample_submit_row_count(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_queries=3)
    (root / "sample_submit.csv").write_text("path\na.jpg\nb.jpg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sample_submit\.csv: has 2 rows but test_query\.csv has 3"):
        load_competition_data(root)
    (root / "sample_submit.csv").write_text("title,file\n" + "q,\n" * 3, encoding="utf-8")
    with pytest.raises(DataError, match=r"sample_submit\.csv, line 1: missing column `path`"):
        load_competition_data(root)


def test_sample_submit_keeps_columns_and_values(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_queries=2)
    (root / "sample_submit.csv").write_text("id,path,extra\n1,NA,\n2,,n/a\n", encoding="utf-8")
    frame = load_competition_data(root).sample_submit
    assert list(frame.columns) == ["id", "path", "extra"]
    assert list(frame["path"]) == ["NA", ""] and list(frame["extra"]) == ["", "n/a"]


def test_answers_validated(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_queries=4, n_gallery=3)
    (root / "test_answers.csv").write_text(
        "query,path\n0,train_000.jpg\n1,missing.jpg\n2,gal_000.jpg\n2,gal_001.jpg\n9,gal_002.jpg\nx,gal_002.jpg\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_competition_data(root)
    messages = {p.line: p.message for p in info.value.problems}
    assert "named by train.csv, so it is not in the test gallery" in messages[2]
    assert messages[3].startswith("image `missing.jpg` not found")
    assert "already answered at line 4" in messages[5]
    assert "query 9 is out of range: test_query.csv has 4 queries" in messages[6]
    assert "query `x` is not a row number" in messages[7]
    assert 4 not in messages


# ---------------------------------------------------------------------- skip_bad_rows


def test_skip_bad_rows_skips_and_reports(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=6)
    (root / "image" / "train_004.jpg").write_bytes(b"broken")
    _write_train(
        root,
        [
            ("好一", "train_000.jpg"),
            ("", "train_001.jpg"),
            ("好二", "gone.jpg"),
            ("好三", "../x.jpg"),
            ("好一", "train_000.jpg"),
            ("好四", "train_004.jpg"),
            ("好五", "train_005.jpg"),
        ],
    )
    data = load_competition_data(root, skip_bad_rows=True, val_size=0)
    assert sorted(data.train["row"]) == [0, 6]
    report = data.report
    assert report.ok and report.skipped_rows == 5
    skipped = [p for p in report.problems if p.message.endswith("(row skipped)")]
    assert len(skipped) == 5 and not any(p.fatal for p in skipped)
    # a skipped row's image is still a training image: never in the gallery
    assert "train_001.jpg" not in data.gallery["path"]
    assert "skipped rows:" in report.summary() and "5" in report.summary()


def test_skip_bad_rows_may_leave_no_training_pairs(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_gallery=2)
    _write_train(root, [("", "train_000.jpg"), ("标题", "gone.jpg")])
    data = load_competition_data(root, skip_bad_rows=True)  # retrieval needs no training pair
    assert len(data.train) == len(data.val) == 0 and data.report.skipped_rows == 2
    assert any(p.kind == "skipped row" and not p.fatal for p in data.report.problems)
    # train_000.jpg is named by train.csv (row skipped), so it stays out of the gallery
    assert list(data.gallery["path"]) == ["gal_000.jpg", "gal_001.jpg"] + [f"train_{i:03d}.jpg" for i in range(1, 6)]


def test_skip_bad_rows_keeps_query_problems_fatal(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    (root / "test_query.csv").write_text("title\n查询\n  \n\u200b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test_query\.csv, line 4: empty query title"):
        load_competition_data(root, skip_bad_rows=True)


def test_skip_bad_rows_excludes_corrupt_gallery_images(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_gallery=3, answers=False)
    (root / "image" / "gal_001.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match="pass --skip_bad_rows to skip them"):
        load_competition_data(root)
    data = load_competition_data(root, skip_bad_rows=True)
    assert list(data.gallery["path"]) == ["gal_000.jpg", "gal_002.jpg"]
    assert data.report.excluded_images == 1 and data.report.skipped_rows == 0


# ------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_encodings(tmp_path, make_dataset_dir, encoding):
    root = make_dataset_dir(tmp_path, encoding=encoding)
    data = load_competition_data(root, val_size=0)
    assert data.train[0]["title"] == "云思木想2019秋装新款0号连衣裙款式0"
    assert data.queries[2]["title"] == "查询2号女装长袖T恤"
    expected = {"gbk": "gb18030", "utf-16": "utf-16"}.get(encoding, encoding)
    assert data.report.encodings[os.path.join(str(root), "train.csv")] == expected


# ----------------------------------------------------------------------------- titles


def test_normalize_title():
    assert normalize_title("  ＸＬ码\u3000２０１９，新款\u200b连衣裙\t\n ") == "XL码 2019,新款连衣裙"
    assert normalize_title("a\x00b") == "a b"
    assert normalize_title(normalize_title("Ｔ恤　女")) == normalize_title("Ｔ恤　女")


def test_titles_are_kept_as_written(tmp_path, make_dataset_dir):
    """Full-width forms reach the tokenizer untouched (the official text path); only outer whitespace goes."""
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    _write_train(root, [("  ＡＢＣ\u3000连衣裙 ", "train_000.jpg"), ("x", "train_001.jpg")])
    (root / "test_query.csv").write_text("title\n２０２４　新款\n", encoding="utf-8")
    data = load_competition_data(root, val_size=0)
    assert data.train[0]["title"] == "ＡＢＣ\u3000连衣裙" and data.queries[0]["title"] == "２０２４　新款"


def _save(im: Image.Image, path, fmt, **kwargs):
    im.save(path, fmt, **kwargs)
    return path


def test_exotic_images_accepted_by_validation(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=2, n_gallery=1, answers=False)
    image_dir = root / "image"
    _save(Image.new("CMYK", (8, 8)), image_dir / "c.jpg", "JPEG")
    _save(Image.new("RGBA", (8, 8)), image_dir / "d.PNG", "PNG")
    _save(Image.fromarray(np.zeros((4, 4), np.uint16)), image_dir / "e.png", "PNG")
    _save(Image.new("L", (8, 8)), image_dir / "f.JPEG", "JPEG")
    (image_dir / "notes.txt").write_text("hi")
    report = check_data(root, val_size=0)
    assert report.ok and report.n_gallery == 5
    notes = [p for p in report.problems if p.kind == "non-image file"]
    assert len(notes) == 1 and not notes[0].fatal and "notes.txt" in notes[0].message


# ------------------------------------------------------------------------- val split


def test_val_split_deterministic_grouped_and_order_free(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=30, captions_per_image=3, answers=False)
    first = load_competition_data(root, val_size=0.2, seed=3)
    again = load_competition_data(root, val_size=0.2, seed=3)
    assert first.val["path"] == again.val["path"] and first.val_gallery["path"] == again.val_gallery["path"]
    assert len(set(first.val["path"])) == 6 and len(first.val) == 18
    others = {tuple(sorted(set(load_competition_data(root, val_size=0.2, seed=s).val["path"]))) for s in range(4, 8)}
    assert len(others | {tuple(sorted(set(first.val["path"])))}) > 1

    lines = (root / "train.csv").read_text(encoding="utf-8").splitlines()
    (root / "train.csv").write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n", encoding="utf-8")
    shuffled = load_competition_data(root, val_size=0.2, seed=3)
    assert set(shuffled.val["path"]) == set(first.val["path"])


def test_val_size_count_zero_and_errors(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=5)
    data = load_competition_data(root, val_size=2)
    assert len(set(data.val["path"])) == 2 and len(data.train) == 3
    assert len(set(load_competition_data(root, val_size=2.0).val["path"])) == 2
    assert len(set(load_competition_data(root, val_size=0.01).val["path"])) == 1  # never rounds to nothing
    none = load_competition_data(root, val_size=0)
    assert len(none.val) == 0 and len(none.val_gallery) == 0 and len(none.train) == 5
    assert none.val.column_names == ["title", "path", "row", "label"]
    for bad in (-1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError, match=r"--val_size .* is invalid"):
            check_data(root, val_size=bad)
    with pytest.raises(ConfigError, match=r"--val_size 5 holds out 5 images but train\.csv has only 5 usable images"):
        load_competition_data(root, val_size=5)


def test_gallery_excludes_every_train_image(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_train_images=4, n_gallery=3, answers=False)
    Image.new("RGB", (8, 8)).save(root / "image" / "Z.JPG", "JPEG")
    data = load_competition_data(root, val_size=1)
    assert list(data.gallery["path"]) == ["Z.JPG", "gal_000.jpg", "gal_001.jpg", "gal_002.jpg"]
    held = data.val[0]["path"]
    assert held.startswith("train_") and held not in data.gallery["path"]
    assert list(data.val_gallery["path"]) == [held] + list(data.gallery["path"])
