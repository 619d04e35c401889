"""The second catalogue of bad inputs (issue 20): hostile files, damaged adapters, impossible options.

Each case ends in the documented result, or a short message naming the file, row or option, exit
status != 0, no traceback and no output file; option and adapter problems are found before any
model loading or embedding. Classes (README, "Robustness"):

| class | behaviour |
| --- | --- |
| special and linked files | only regular files inside the data folder are read; links leaving it, pipes, sockets, devices, linked folders refused by name, never opened |
| undecodable names | a file name that is not UTF-8 is refused by name (with its GBK reading) |
| EXIF / metadata damage | the orientation step's errors leave the image as stored (un-rotated), the same everywhere |
| queries and sample_submit | blank titles refused by line, never dropped; template in another order filled by title |
| damaged, foreign, incomplete adapters | refused before peft loads them: file, what is wrong |
| impossible options | refused before the model is loaded, naming the option |
| one rule for formats | every extension Pillow opens is an image, in training, checks and the gallery alike |
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cnclip_lora.adapter.validate import AdapterError, validate_adapter_folder
from cnclip_lora.commands import main
from cnclip_lora.data import IMAGE_EXTENSIONS, check_data, load_competition_data, open_image, submission_order
from cnclip_lora.errors import DataError
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.retrieve.run import write_submission


def _unloadable_model(tmp_path: Path) -> Path:
    """An existing folder with no model in it: passes the path check, fails if anything loads it."""
    folder = tmp_path / "unloadable-model"
    folder.mkdir(exist_ok=True)
    return folder


def _run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return code, text


def _retrieve(capsys, model, root, out, *extra):
    return _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        model,
        "--data_dir",
        root,
        "--output",
        out,
        "--cache_dir",
        "",
        "--device",
        "cpu",
        *extra,
    )


def _kinds(report) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in report.problems:
        found.setdefault(p.kind, []).append(str(p))
    return found


@pytest.fixture
def outside(tmp_path) -> Path:
    """An image that lives outside the data folder."""
    path = tmp_path / "elsewhere" / "secret.jpg"
    path.parent.mkdir()
    Image.new("RGB", (16, 16), "green").save(path, "JPEG")
    return path


# ============================================================ special and linked files (10)


def test_link_leaving_the_data_folder_is_refused_by_check_data(tmp_path, make_dataset_dir, outside):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "linked.jpg").symlink_to(outside)
    report = check_data(root)
    assert not report.ok
    [msg] = _kinds(report)["unsafe link"]
    assert "image/linked.jpg" in msg and "outside the data folder" in msg and str(outside) in msg


def test_link_leaving_the_data_folder_is_never_ranked(tmp_path, make_dataset_dir, outside, tiny_model_dir, capsys):
    root = make_dataset_dir(tmp_path, n_gallery=3, n_queries=2)
    (root / "image" / "aaa_linked.jpg").symlink_to(outside)
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, tiny_model_dir, root, out, "--topk_output", tmp_path / "topk.csv", "--top_k", "3")
    assert code == 0, text
    topk = pd.read_csv(tmp_path / "topk.csv", dtype=str)
    assert "aaa_linked.jpg" not in set(topk["path"]) and len(set(topk["path"])) == 3


def test_train_row_naming_an_outside_link_is_a_row_problem(tmp_path, make_dataset_dir, outside):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "linked.jpg").symlink_to(outside)
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("链接图片\tlinked.jpg\n")
    with pytest.raises(DataError) as err:
        load_competition_data(root, val_size=0)
    assert any("line 8: image `linked.jpg` is not read: symbolic link" in str(p) for p in err.value.problems)


def test_link_inside_the_data_folder_is_an_ordinary_image(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "alias.jpg").symlink_to(root / "image" / "gal_000.jpg")
    data = load_competition_data(root, val_size=0)
    assert "alias.jpg" in list(data.gallery["path"])


def test_broken_link_is_reported_by_name(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "dangling.jpg").symlink_to(root / "image" / "gone.jpg")
    msgs = _kinds(check_data(root))["unsafe link"]
    assert any("dangling.jpg" in m and "broken symbolic link" in m for m in msgs)


def _check_data_in_thread(root: Path, **kwargs):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("report", check_data(root, **kwargs)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "check_data blocked on a special file"
    return result["report"]


def test_named_pipe_never_blocks_and_is_named(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    os.mkfifo(root / "image" / "pipe.jpg")
    report = _check_data_in_thread(root)
    [msg] = _kinds(report)["special file"]
    assert "image/pipe.jpg" in msg and "named pipe" in msg and "it was not opened" in msg


def test_named_pipe_named_in_train_csv_is_never_opened(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    os.mkfifo(root / "image" / "pipe.jpg")
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("管道\tpipe.jpg\n")
    report = _check_data_in_thread(root, skip_bad_rows=True)
    assert report.ok and report.skipped_rows == 1
    assert any("pipe.jpg" in str(p) and "named pipe" in str(p) for p in report.problems)


def test_socket_in_the_image_folder_is_refused(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "image" / "s.jpg"))
        msgs = _kinds(check_data(root))["special file"]
    finally:
        sock.close()
    assert any("s.jpg" in m and "a socket" in m for m in msgs)


def test_link_to_a_device_is_refused_without_reading_it(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    report = _check_data_in_thread(root)
    assert any("zero.jpg" in m for m in _kinds(report)["unsafe link"])


def test_linked_folder_is_not_followed_and_says_so(tmp_path, make_dataset_dir, outside):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "more").symlink_to(outside.parent, target_is_directory=True)
    report = check_data(root, skip_bad_rows=True)
    assert report.n_gallery == 4  # secret.jpg not in it
    assert any("image/more" in str(p) and "linked folder" in str(p) for p in report.problems)


# ====================================================================== undecodable names (4)

_GBK_NAME = "测试图片.jpg".encode("gbk")


def _gbk_file(folder: Path) -> None:
    Image.new("RGB", (16, 16), "red").save(os.path.join(os.fsencode(folder), _GBK_NAME), "JPEG")


def test_gbk_file_name_is_refused_with_its_gbk_reading(tmp_path, make_dataset_dir, capsys):
    root = make_dataset_dir(tmp_path)
    _gbk_file(root / "image")
    code, text = _run_cli(capsys, "check-data", root)
    assert code == 1
    assert "[fatal] undecodable name (1)" in text and "not valid UTF-8" in text and "测试图片.jpg" in text


def test_gbk_file_name_is_excluded_with_skip_bad_rows(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    _gbk_file(root / "image")
    data = load_competition_data(root, val_size=0, skip_bad_rows=True)
    assert len(data.gallery) == 4 and data.report.excluded_images == 1


def test_gbk_file_name_in_a_subfolder_is_refused(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "image" / "sub").mkdir()
    _gbk_file(root / "image" / "sub")
    assert any("image/sub/" in m and "测试图片.jpg" in m for m in _kinds(check_data(root))["undecodable name"])


def test_retrieve_writes_a_utf8_submission_beside_an_undecodable_name(
    tmp_path, make_dataset_dir, tiny_model_dir, capsys
):
    root = make_dataset_dir(tmp_path, n_gallery=3, n_queries=2)
    _gbk_file(root / "image")
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, tiny_model_dir, root, out)
    assert code == 0, text
    assert set(pd.read_csv(out)["path"]) <= {"gal_000.jpg", "gal_001.jpg", "gal_002.jpg"}


# ================================================================== EXIF / metadata damage (6)


def _exif(entries, tail=b"") -> bytes:
    """A big-endian EXIF block with the given raw IFD entries (tag, type, count, 4 value bytes)."""
    body = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack(">HHI", tag, typ, count) + value
    return b"Exif\x00\x00" + body + b"\x00\x00\x00\x00" + tail


def _pixels() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 16, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "name,exif",
    [
        ("ascii_orientation.jpg", _exif([(0x0112, 2, 4, b"abc\x00")])),
        ("orientation_9.jpg", _exif([(0x0112, 3, 1, b"\x00\x09\x00\x00")])),
        ("rational_zero.jpg", _exif([(0x0112, 5, 1, struct.pack(">I", 26))], struct.pack(">II", 6, 0))),
        ("truncated_ifd.jpg", _exif([(0x0112, 3, 1, b"\x00\x06\x00\x00")])[:14]),
    ],
)
def test_damaged_jpeg_orientation_leaves_the_image_as_stored(tmp_path, name, exif):
    path = tmp_path / name
    _pixels().save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as raw:
        stored = raw.convert("RGB")
    assert open_image(path).size == (16, 8)
    np.testing.assert_array_equal(np.asarray(open_image(path)), np.asarray(stored))


def test_garbage_png_exif_chunk_is_used_unrotated_not_rejected(tmp_path):
    path = tmp_path / "garbage_exif.png"
    _pixels().save(path, "PNG", exif=b"garbage-exif")
    with Image.open(path) as raw:  # Pillow's own orientation step fails on this file
        raw.load()
        with pytest.raises(SyntaxError):
            from PIL import ImageOps

            ImageOps.exif_transpose(raw)
    np.testing.assert_array_equal(np.asarray(open_image(path)), np.asarray(_pixels()))


def test_damaged_exif_is_the_same_pixels_in_training_checks_and_retrieval(tmp_path, make_dataset_dir, tiny_model_dir):
    from transformers import AutoProcessor, ChineseCLIPModel

    from cnclip_lora.adapter.record import Preprocessing
    from cnclip_lora.inference.model import RetrievalModel

    root = make_dataset_dir(tmp_path)
    image_dir = root / "image"
    _pixels().save(image_dir / "gal_000.png", "PNG", exif=b"garbage-exif")
    _pixels().save(image_dir / "clean.png", "PNG")
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("坏元数据\tgal_000.png\n")
    assert check_data(root, val_size=0).ok
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rows = [{"title": "t", "path": "gal_000.png"}, {"title": "t", "path": "clean.png"}]
    pixels = ImageTextCollator(processor, image_dir, flip="none")(rows)["pixel_values"]
    torch.testing.assert_close(pixels[0], pixels[1], atol=0, rtol=0)
    model = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    encoder = RetrievalModel(model, processor, Preprocessing(train_flip="none"))
    emb = encoder.encode_images([image_dir / "gal_000.png", image_dir / "clean.png"], batch_size=2)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_file_with_tiff_magic_and_garbage_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 6)
    with pytest.raises(DataError, match=r"fake\.tif"):
        open_image(path)


# ======================================================= queries and sample_submit.csv (11)


def test_whitespace_only_query_is_refused_at_its_line(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False)
    (root / "test_query.csv").write_text("title\n查询0号\n   \n查询2号\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test_query\.csv, line 3: empty query title"):
        load_competition_data(root)


def test_empty_quoted_query_is_an_empty_title_not_a_row_count_problem(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "test_query.csv").write_text('title\n查询0号\n""\n查询2号\n', encoding="utf-8")
    report = check_data(root)
    kinds = _kinds(report)
    assert "row count" not in kinds
    assert any("test_query.csv, line 3: empty query title" in m for m in kinds["empty title"])


def test_empty_line_between_queries_is_a_blank_query_not_skipped(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False)
    (root / "test_query.csv").write_text("title\n查询0号\n\n查询2号\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test_query\.csv, line 3: empty query title"):
        load_competition_data(root)


def test_trailing_empty_lines_after_the_queries_are_ignored(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, sample_submit=False, answers=False)
    (root / "test_query.csv").write_text("title\n查询0号\n查询1号\n\n\n", encoding="utf-8")
    assert list(load_competition_data(root).queries["title"]) == ["查询0号", "查询1号"]


def test_blank_query_stops_retrieve_before_the_model_with_no_output(tmp_path, make_dataset_dir, capsys):
    root = make_dataset_dir(tmp_path, sample_submit=False)
    (root / "test_query.csv").write_text("title\n查询0号\n \t \n查询2号\n", encoding="utf-8")
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, _unloadable_model(tmp_path), root, out)
    assert code == 2 and "test_query.csv, line 3: empty query title" in text and not out.exists()


def test_duplicate_queries_each_keep_their_own_row(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    root = make_dataset_dir(tmp_path, sample_submit=False)
    (root / "test_query.csv").write_text("title\n同一个查询\n另一个\n同一个查询\n", encoding="utf-8")
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, tiny_model_dir, root, out)
    assert code == 0, text
    sub = pd.read_csv(out, dtype=str)
    assert list(sub["title"]) == ["同一个查询", "另一个", "同一个查询"]
    assert sub["path"][0] == sub["path"][2]  # same text, same best image


def test_template_in_another_order_is_filled_by_title(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    root = make_dataset_dir(tmp_path, n_queries=4, n_gallery=6, sample_submit=False)
    out_plain = tmp_path / "plain.csv"
    assert _retrieve(capsys, tiny_model_dir, root, out_plain)[0] == 0
    by_title = dict(pd.read_csv(out_plain, dtype=str).itertuples(index=False))
    titles = list(by_title)
    order = [2, 0, 3, 1]
    rows = ["id,title,path"] + [f"r{i},{titles[i]}," for i in order]
    (root / "sample_submit.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, tiny_model_dir, root, out)
    assert code == 0, text
    sub = pd.read_csv(out, dtype=str)
    assert list(sub["id"]) == [f"r{i}" for i in order]  # template order and columns kept
    assert [by_title[t] for t in sub["title"]] == list(sub["path"])  # each row: its own title's image


def test_template_title_that_is_no_query_is_refused_naming_the_line(tmp_path, make_dataset_dir, capsys):
    root = make_dataset_dir(tmp_path)
    (root / "sample_submit.csv").write_text(
        "title,path\n查询0号女装长袖T恤,\n别的标题,\n查询2号女装长袖T恤,\n", encoding="utf-8"
    )
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, _unloadable_model(tmp_path), root, out)
    assert code == 2 and not out.exists()
    assert "sample_submit.csv, line 3: title `别的标题` is not a query in test_query.csv" in text


def test_template_repeating_a_title_more_often_than_the_queries_is_refused(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "sample_submit.csv").write_text(
        "title,path\n查询0号女装长袖T恤,\n查询0号女装长袖T恤,\n查询2号女装长袖T恤,\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"sample_submit\.csv, line 3: title `查询0号女装长袖T恤` occurs more often"):
        load_competition_data(root)


@pytest.mark.parametrize(
    "template",
    [
        pd.DataFrame({"id": ["a", "b", "c"], "path": ["", "", ""]}),
        pd.DataFrame({"title": ["", " ", ""], "path": ["", "", ""]}),
    ],
)
def test_template_without_titles_is_filled_in_query_order(tmp_path, template):
    out = write_submission(tmp_path / "s.csv", template, ["q0", "q1", "q2"], ["x.jpg", "y.jpg", "z.jpg"])
    assert list(pd.read_csv(out)["path"]) == ["x.jpg", "y.jpg", "z.jpg"]


def test_repeated_titles_in_another_order_map_occurrence_by_occurrence():
    template = pd.DataFrame({"title": ["b", "a", "b", "ａ"], "path": [""] * 4})  # full-width a normalises to a
    assert submission_order(template, ["a", "b", "a", "b"]) == [1, 0, 3, 2]
    with pytest.raises(DataError, match="has 4 rows but there are 3 queries"):
        submission_order(template, ["a", "b", "a"])


# ============================================== damaged, foreign or incomplete adapters (10)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A genuine LoRA adapter of the tiny model on both towers, with the training record."""
    from transformers import ChineseCLIPModel

    from cnclip_lora.adapter.record import LoraSummary, Preprocessing, RunRecord
    from cnclip_lora.modeling import apply_lora, count_lora_modules

    torch.manual_seed(0)
    model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    RunRecord(Preprocessing(train_flip="none"), lora=LoraSummary(adapted_modules=count_lora_modules(model))).save(out)
    return out


@pytest.fixture
def base(tiny_model_dir):
    from transformers import ChineseCLIPModel

    return ChineseCLIPModel.from_pretrained(tiny_model_dir)


@pytest.fixture
def copy_adapter(adapter_dir, tmp_path):
    def make() -> Path:
        return Path(shutil.copytree(adapter_dir, tmp_path / "adapter_copy"))

    return make


def _rewrite_tensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = edit(load_file(path))
    save_file(tensors, path)


def test_genuine_adapter_passes_with_both_towers(adapter_dir, base):
    counts = validate_adapter_folder(adapter_dir, base)
    assert counts["text"] > 0 and counts["vision"] > 0


def test_truncated_adapter_weights_are_refused_by_retrieve(
    copy_adapter, make_dataset_dir, tmp_path, tiny_model_dir, capsys
):
    folder = copy_adapter()
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    root = make_dataset_dir(tmp_path)
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, tiny_model_dir, root, out, "--adapter", folder)
    assert code == 2 and not out.exists()
    assert "adapter_model.safetensors: not a readable safetensors file" in text and "truncated" in text


def test_adapter_config_that_is_not_json_names_line_and_column(copy_adapter, base):
    folder = copy_adapter()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA",\n  "r": 4,,\n}', encoding="utf-8")
    with pytest.raises(AdapterError, match=r"adapter_config\.json: not valid JSON \(line 2, column 10"):
        validate_adapter_folder(folder, base)


def test_adapter_config_that_is_not_an_object_is_refused(copy_adapter, base):
    folder = copy_adapter()
    (folder / "adapter_config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(AdapterError, match="expected a JSON object"):
        validate_adapter_folder(folder, base)


def test_adapter_of_another_peft_type_is_refused(copy_adapter, base):
    folder = copy_adapter()
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="peft_type is 'IA3'; this package loads LoRA adapters only"):
        validate_adapter_folder(folder, base)


def test_adapter_targeting_modules_the_base_lacks_is_refused(copy_adapter, base):
    folder = copy_adapter()
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["attn.c_attn", "mlp.w1"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="match no module of the base model"):
        validate_adapter_folder(folder, base)


def test_adapter_for_a_base_of_another_size_is_refused(adapter_dir, tmp_path, make_dataset_dir, capsys):
    from cnclip_lora.demo.tiny_model import make_tiny_model

    wider = make_tiny_model(tmp_path / "wider", seed=0, hidden_size=64)
    root = make_dataset_dir(tmp_path)
    out = tmp_path / "submit.csv"
    code, text = _retrieve(capsys, wider, root, out, "--adapter", adapter_dir)
    assert code == 2 and not out.exists()
    assert "a base model of another size" in text


def test_adapter_missing_its_vision_tensors_is_refused_naming_the_tower(copy_adapter, base):
    folder = copy_adapter()
    _rewrite_tensors(folder, lambda t: {k: v for k, v in t.items() if "vision_model" not in k})
    with pytest.raises(
        AdapterError,
        match=r"tensor\(s\) that adapter_config\.json calls for are missing \(\d+ on the "
        r"vision tower",
    ):
        validate_adapter_folder(folder, base)


def test_adapter_missing_one_lora_b_is_refused(copy_adapter, base):
    folder = copy_adapter()
    state: dict = {}

    def drop_one(tensors):
        key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[0]
        state["key"] = key
        return {k: v for k, v in tensors.items() if k != key}

    _rewrite_tensors(folder, drop_one)
    with pytest.raises(AdapterError, match=r"1 LoRA tensor\(s\)"):
        validate_adapter_folder(folder, base)


def test_adapter_whose_config_and_record_disagree_on_a_tower_is_refused(copy_adapter, base):
    folder = copy_adapter()
    _rewrite_tensors(folder, lambda t: {k: v for k, v in t.items() if "vision_model" not in k})
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = [t for t in config["target_modules"] if t.startswith("text_model")] or [
        "query",
        "key",
        "value",
    ]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        AdapterError,
        match=r"training recorded \d+ adapted vision-tower module\(s\) in cnclip_lora\.json"
        r", but the adapter holds 0",
    ):
        validate_adapter_folder(folder, base)


def test_adapter_weights_for_modules_the_base_lacks_are_refused(copy_adapter, base):
    folder = copy_adapter()

    def add_foreign(tensors):
        tensors["base_model.model.text_model.encoder.layer.99.attention.self.query.lora_A.weight"] = torch.zeros(4, 8)
        return tensors

    _rewrite_tensors(folder, add_foreign)
    with pytest.raises(
        AdapterError, match=r"module\(s\) the base model does not have \(text_model\.encoder\.layer\.99"
    ):
        validate_adapter_folder(folder, base)


# ===================================================================== impossible options (12)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if training gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the option was checked")

    import importlib

    monkeypatch.setattr(importlib.import_module("cnclip_lora.training.run"), "load_model_and_processor", refuse)


def _train(capsys, model, root, out, *extra):
    return _run_cli(
        capsys,
        "train",
        "--model_name_or_path",
        model,
        "--data_dir",
        root,
        "--output_dir",
        out,
        "--use_cpu",
        "true",
        "--val_size",
        "0",
        "--max_steps",
        "1",
        *extra,
    )


def test_max_length_above_the_models_positions_is_refused(
    tmp_path, make_dataset_dir, tiny_model_dir, capsys, no_model_load
):
    from transformers import AutoConfig

    limit = AutoConfig.from_pretrained(tiny_model_dir).text_config.max_position_embeddings
    code, text = _train(
        capsys,
        tiny_model_dir,
        make_dataset_dir(tmp_path),
        tmp_path / "out",
        "--max_length",
        limit + 1,
        "--per_device_train_batch_size",
        2,
    )
    assert code == 2 and f"--max_length {limit + 1} is above the {limit} positions" in text


@pytest.mark.parametrize(
    "flag,value,expected",
    [
        ("--learning_rate", "-1e-4", "--learning_rate -0.0001 must be a finite number >= 0"),
        ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps 0 must be >= 1"),
        ("--per_device_train_batch_size", "0", "--per_device_train_batch_size 0 must be >= 1"),
        ("--adam_beta2", "1.5", "--adam_beta2 1.5 must be in [0, 1)"),
        ("--weight_decay", "nan", "--weight_decay nan must be >= 0"),
    ],
)
def test_optimizer_and_batch_values_that_cannot_train_are_refused(
    tmp_path, make_dataset_dir, capsys, flag, value, expected, no_model_load
):
    code, text = _train(
        capsys, _unloadable_model(tmp_path), make_dataset_dir(tmp_path), tmp_path / "out", f"{flag}={value}"
    )
    assert code == 2 and expected in text


def test_batch_larger_than_the_data_with_drop_last_is_zero_steps_and_an_error(
    tmp_path, make_dataset_dir, tiny_model_dir, capsys, no_model_load
):
    out = tmp_path / "out"
    code, text = _train(capsys, tiny_model_dir, make_dataset_dir(tmp_path), out, "--per_device_train_batch_size", 64)
    assert code == 2 and "zero steps would be trained" in text and "only 6 training pairs" in text
    assert not (out / "adapter_model.safetensors").exists()


def test_zero_epochs_is_an_error(tmp_path, make_dataset_dir, tiny_model_dir, capsys, no_model_load):
    code, text = _run_cli(
        capsys,
        "train",
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        make_dataset_dir(tmp_path),
        "--output_dir",
        tmp_path / "o",
        "--use_cpu",
        "true",
        "--val_size",
        "0",
        "--num_train_epochs",
        "0",
        "--per_device_train_batch_size",
        "2",
    )
    assert code == 2 and "--num_train_epochs 0.0 trains zero steps" in text


@pytest.mark.parametrize("under", [False, True])
def test_output_dir_that_is_or_lies_under_a_file_is_refused(tmp_path, make_dataset_dir, capsys, under):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "run" if under else blocker
    code, text = _train(capsys, _unloadable_model(tmp_path), make_dataset_dir(tmp_path), target)
    assert code == 2 and f"--output_dir {target}" in text and ("lies under" in text) == under
    assert blocker.read_text() == "x"


def test_output_that_is_an_existing_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "pred"
    folder.mkdir()
    code, text = _retrieve(capsys, _unloadable_model(tmp_path), tmp_path / "no-such-data", folder)
    assert code == 2 and f"--output {folder} is an existing folder" in text


def test_output_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, text = _retrieve(capsys, _unloadable_model(tmp_path), tmp_path / "d", tmp_path / "f" / "submit.csv")
    assert code == 2 and "is a file, not a folder" in text


def test_output_and_topk_output_naming_one_file_are_refused(tmp_path, capsys):
    out = tmp_path / "s.csv"
    same = tmp_path / "x" / ".." / "s.csv"
    code, text = _retrieve(capsys, _unloadable_model(tmp_path), tmp_path / "d", out, "--topk_output", same)
    assert code == 2 and "--output and --topk_output both name" in text and not out.exists()


def test_device_naming_an_absent_accelerator_is_refused(tmp_path, capsys):
    # Index 99 exists on no machine, with or without a GPU.
    code, text = _run_cli(
        capsys,
        "retrieve",
        "--model_name_or_path",
        _unloadable_model(tmp_path),
        "--data_dir",
        tmp_path / "d",
        "--output",
        tmp_path / "s.csv",
        "--device",
        "cuda:99",
    )
    assert code == 2 and "--device 'cuda:99'" in text
    assert ("no cuda device" in text) != ("only" in text and "cuda device(s) here" in text)


def test_device_that_is_no_device_name_is_refused_by_evaluate(tmp_path, capsys):
    code, text = _run_cli(
        capsys,
        "evaluate",
        "--model_name_or_path",
        _unloadable_model(tmp_path),
        "--data_dir",
        tmp_path / "d",
        "--device",
        "gpu0",
    )
    assert code == 2 and "--device 'gpu0' is not a device name" in text


# ====================================================== one rule for image formats (4)


def test_every_extension_pillow_opens_is_an_image():
    Image.init()
    openable = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert openable == set(IMAGE_EXTENSIONS)
    assert {".gif", ".tif", ".tiff", ".jpg", ".png", ".webp", ".bmp"} <= set(IMAGE_EXTENSIONS)


def test_gif_and_tiff_gallery_images_are_ranked(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path, n_gallery=1, answers=False)
    Image.new("RGB", (16, 16), "blue").save(root / "image" / "g.gif")
    Image.new("RGB", (16, 16), "blue").save(root / "image" / "t.tiff")
    data = load_competition_data(root, val_size=0)
    assert {"g.gif", "t.tiff"} <= set(data.gallery["path"])
    assert "non-image file" not in _kinds(data.report)


def test_animated_gif_training_image_is_used_without_an_ignored_note(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green")]
    frames[0].save(root / "image" / "anim.gif", save_all=True, append_images=frames[1:])
    with open(root / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("动图\tanim.gif\n")
    data = load_competition_data(root, val_size=0)
    assert "anim.gif" in list(data.train["path"]) and not data.report.problems
    assert open_image(root / "image" / "anim.gif").getpixel((1, 1))[0] > 200  # first frame (red)


def test_same_picture_as_gif_and_png_reaches_the_model_identically(tmp_path, tiny_model_dir):
    from transformers import AutoProcessor

    picture = Image.new("P", (16, 16))
    picture.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    picture.paste(1, (0, 0, 8, 16))
    picture.save(tmp_path / "p.gif")
    picture.convert("RGB").save(tmp_path / "p.png")
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    pixels = ImageTextCollator(processor, tmp_path, flip="none")(
        [{"title": "t", "path": "p.gif"}, {"title": "t", "path": "p.png"}]
    )["pixel_values"]
    torch.testing.assert_close(pixels[0], pixels[1], atol=0, rtol=0)
