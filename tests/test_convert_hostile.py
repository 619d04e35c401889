"""``convert-original`` on damaged or foreign inputs: one line naming the file (and the key), no traceback."""

from __future__ import annotations

import json

import pytest

from cnclip_lora.commands import main
from cnclip_lora.convert import model_info_for


def _convert(tmp_path, capsys, *extra: str) -> str:
    code = main(["convert-original", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
    return err


def test_a_zero_byte_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"")
    err = _convert(tmp_path, capsys, "--vision_model", "ViT-B-16", "--text_model", "RoBERTa-wwm-ext-base-chinese")
    assert "ckpt.pt is empty" in err


def test_a_garbage_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"\x00" * 64)
    err = _convert(tmp_path, capsys, "--vision_model", "ViT-B-16", "--text_model", "RoBERTa-wwm-ext-base-chinese")
    assert "ckpt.pt" in err


@pytest.mark.parametrize(
    ("info", "says"),
    [
        ([1, 2], "expected a JSON object"),
        ({"embed_dim": 512}, "missing image_resolution"),
        ("text", "expected a JSON object"),
    ],
)
def test_a_model_info_of_the_wrong_shape_names_the_file(tmp_path, capsys, info, says):
    (tmp_path / "ckpt.pt").write_bytes(b"not read before the info is checked")
    (tmp_path / "info.json").write_text(json.dumps(info))
    err = _convert(tmp_path, capsys, "--model_info", str(tmp_path / "info.json"))
    assert says in err and "info.json" in err


def test_a_model_info_value_of_the_wrong_kind_names_the_key(tmp_path, capsys):
    info = model_info_for("ViT-B-16", "RoBERTa-wwm-ext-base-chinese")
    info["vision_width"] = "wide"
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    (tmp_path / "info.json").write_text(json.dumps(info))
    err = _convert(tmp_path, capsys, "--model_info", str(tmp_path / "info.json"))
    assert "vision_width must be a int" in err and "info.json" in err


def test_a_resnet_model_info_is_diagnosed_as_resnet_only_when_it_is_one(tmp_path, capsys):
    info = model_info_for("ViT-B-16", "RoBERTa-wwm-ext-base-chinese")
    info["vision_layers"] = [3, 4, 6, 3]
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    (tmp_path / "info.json").write_text(json.dumps(info))
    assert "ResNet" in _convert(tmp_path, capsys, "--model_info", str(tmp_path / "info.json"))
    del info["vision_layers"]
    (tmp_path / "info.json").write_text(json.dumps(info))
    err = _convert(tmp_path, capsys, "--model_info", str(tmp_path / "info.json"))
    assert "ResNet" not in err and "vision_layers" in err
