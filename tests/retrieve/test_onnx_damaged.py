"""Damaged or foreign ONNX export folders: each refused with one line naming the file, before ranking."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'cnclip-lora[onnx]'")

from cnclip_lora.commands import main  # noqa: E402
from cnclip_lora.errors import ConfigError  # noqa: E402
from cnclip_lora.inference.model import RetrievalModel  # noqa: E402
from cnclip_lora.inference.onnx_engine import TEXT_FILE, VISION_FILE  # noqa: E402
from cnclip_lora.retrieve.export_onnx import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def export(tiny_model_dir, tmp_path_factory) -> Path:
    return export_onnx(str(tiny_model_dir), tmp_path_factory.mktemp("onnx") / "export")


@pytest.fixture
def copy(export, tmp_path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(export, out)
    return out


def _load(folder: Path) -> None:
    RetrievalModel.from_pretrained(str(folder), backend="onnx")


@pytest.mark.parametrize("name", [TEXT_FILE, VISION_FILE])
def test_a_truncated_graph_names_the_file(copy, name):
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(ConfigError, match=rf"{name}: not a readable ONNX graph"):
        _load(copy)


def test_an_empty_graph_names_the_file(copy):
    (copy / VISION_FILE).write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"{VISION_FILE}: the file is empty"):
        _load(copy)


def test_a_foreign_graph_in_place_of_a_tower_is_named(copy):
    """The vision graph copied over the text one: its inputs are not a text tower's."""
    shutil.copy(copy / VISION_FILE, copy / TEXT_FILE)
    with pytest.raises(ConfigError, match=rf"{TEXT_FILE}: inputs \['pixel_values'\]"):
        _load(copy)


@pytest.mark.parametrize("name", ["processor_config.json", "tokenizer_config.json"])
def test_missing_processor_files_are_named_not_fetched_from_the_hub(copy, name):
    (copy / name).unlink()
    with pytest.raises(ConfigError, match=name):
        _load(copy)


def test_a_damaged_export_is_one_line_through_retrieve(copy, demo_dir, tmp_path, capsys):
    (copy / TEXT_FILE).write_bytes(b"garbage" * 100)
    code = main(["retrieve", "--model_name_or_path", str(copy), "--backend", "onnx", "--data_dir", str(demo_dir),
                 "--output", str(tmp_path / "s.csv"), "--cache_dir", ""])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and TEXT_FILE in err
    assert not (tmp_path / "s.csv").exists()
