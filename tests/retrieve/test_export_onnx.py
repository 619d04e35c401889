"""ONNX export: onnxruntime embeddings equal PyTorch's, same rankings, safe output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is part of `make test`")

from cnclip_lora.adapter.record import RECORD_FILE, Preprocessing
from cnclip_lora.commands import main
from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.errors import ConfigError
from cnclip_lora.inference.model import RetrievalModel
from cnclip_lora.inference.onnx_engine import TEXT_FILE, VISION_FILE
from cnclip_lora.retrieve.export_onnx import export_onnx
from cnclip_lora.retrieve.run import EvaluateArguments, RetrieveArguments, evaluate_retrieval, retrieve

# One character up to far past the 52-token limit (truncated), mixed scripts, so batches pad differently.
TITLES = [
    "裙",
    "红色条纹T恤",
    "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723",
    "Nike 运动鞋 42码",
    "夏季" * 40,
    "a",
    "复古港风宽松牛仔外套男女同款潮牌ins",
]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-adapter") / "out"
    argv = []
    for k, v in {
        "model_name_or_path": tiny_model_dir,
        "data_dir": demo_dir,
        "output_dir": out,
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-2,
        "lora_r": 4,
        "lora_alpha": 8,
        "flip": "always",
        "val_size": 0,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
    }.items():
        argv += [f"--{k}", str(v)]
    train_from_argv(argv)
    return out


@pytest.fixture(scope="module")
def export_dir(adapter_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-export") / "onnx"
    assert (
        main(["export-onnx", "--model_name_or_path", str(tiny_model_dir), "--adapter", str(adapter_dir), str(out)])
        == 0
    )
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_export_folder_holds_both_towers_processor_and_the_adapters_record(export_dir, adapter_dir):
    names = {p.name for p in export_dir.iterdir()}
    assert {TEXT_FILE, VISION_FILE, RECORD_FILE, "tokenizer_config.json"} <= names
    assert any(n in names for n in ("preprocessor_config.json", "processor_config.json"))
    assert (export_dir / RECORD_FILE).read_bytes() == (adapter_dir / RECORD_FILE).read_bytes()
    assert Preprocessing.load(export_dir).inference_flip  # trained with flip=always: the gallery is flipped too
    assert not [p for p in export_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_onnxruntime_text_embeddings_equal_pytorch(export_dir, adapter_dir, tiny_model_dir, batch_size):
    torch_model = RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter_dir), device="cpu")
    onnx_model = RetrievalModel.from_pretrained(str(export_dir), backend="onnx")
    assert onnx_model.preprocessing == torch_model.preprocessing
    ref = torch_model.encode_texts(TITLES, batch_size=batch_size)
    got = onnx_model.encode_texts(TITLES, batch_size=batch_size)
    assert got.shape == ref.shape == (len(TITLES), torch_model.model.config.projection_dim)
    assert _cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnxruntime_image_embeddings_equal_pytorch(export_dir, adapter_dir, tiny_model_dir, demo_dir, batch_size):
    paths = sorted(str(p) for p in (demo_dir / "image").iterdir())[:5]
    torch_model = RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter_dir), device="cpu")
    onnx_model = RetrievalModel.from_pretrained(str(export_dir), backend="onnx")
    ref = torch_model.encode_images(paths, batch_size=batch_size)
    got = onnx_model.encode_images(paths, batch_size=batch_size)
    assert _cosines(got, ref).min() >= 0.9999


def test_retrieve_and_evaluate_with_the_onnx_backend_rank_like_torch(
    export_dir, adapter_dir, tiny_model_dir, demo_dir, tmp_path
):
    common = dict(data_dir=str(demo_dir), cache_dir="", batch_size=7)
    ref = retrieve(
        RetrieveArguments(
            model_name_or_path=str(tiny_model_dir),
            adapter=str(adapter_dir),
            output=str(tmp_path / "torch.csv"),
            top_k=5,
            **common,
        )
    )
    got = retrieve(
        RetrieveArguments(
            model_name_or_path=str(export_dir), backend="onnx", output=str(tmp_path / "onnx.csv"), top_k=5, **common
        )
    )
    np.testing.assert_array_equal(got.indices[:, 0], ref.indices[:, 0])
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    assert (tmp_path / "onnx.csv").read_text() == (tmp_path / "torch.csv").read_text()
    ev_ref = evaluate_retrieval(
        EvaluateArguments(model_name_or_path=str(tiny_model_dir), adapter=str(adapter_dir), split="test", **common)
    )
    ev_got = evaluate_retrieval(
        EvaluateArguments(model_name_or_path=str(export_dir), backend="onnx", split="test", **common)
    )
    assert ev_got == ev_ref


def test_cli_retrieve_accepts_backend_onnx(export_dir, demo_dir, tmp_path):
    out = tmp_path / "submit.csv"
    assert (
        main(
            [
                "retrieve",
                "--model_name_or_path",
                str(export_dir),
                "--backend",
                "onnx",
                "--data_dir",
                str(demo_dir),
                "--output",
                str(out),
                "--cache_dir",
                "",
            ]
        )
        == 0
    )
    assert out.is_file()


def test_onnx_backend_refuses_a_folder_without_an_export_and_an_adapter(tiny_model_dir, demo_dir, adapter_dir):
    with pytest.raises(ConfigError, match="not an ONNX export"):
        RetrievalModel.from_pretrained(str(tiny_model_dir), backend="onnx")
    with pytest.raises(ConfigError, match="--backend onnx"):
        RetrieveArguments(model_name_or_path=str(tiny_model_dir), adapter=str(adapter_dir), backend="onnx")
    with pytest.raises(ConfigError, match="--backend onnx"):
        RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter_dir), backend="onnx")


def test_onnx_backend_refuses_an_export_without_its_record(export_dir, tmp_path):
    import shutil

    copy = tmp_path / "onnx"
    shutil.copytree(export_dir, copy)
    (copy / RECORD_FILE).unlink()
    with pytest.raises(ConfigError, match=RECORD_FILE):
        RetrievalModel.from_pretrained(str(copy), backend="onnx")


def test_export_refuses_a_non_empty_folder_and_keeps_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-onnx", "--model_name_or_path", str(tiny_model_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_export_leaves_no_folder_and_overwrite_replaces_whole(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "export"
    real_export = torch.onnx.export
    calls = []

    def export_then_fail(module, args, path, **kwargs):  # the second tower fails after a partial file
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise RuntimeError("exporter failed mid-export")
        return real_export(module, args, path, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_then_fail)
    with pytest.raises(RuntimeError, match="mid-export"):
        export_onnx(str(tiny_model_dir), out)
    monkeypatch.setattr(torch.onnx, "export", real_export)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_onnx(str(tiny_model_dir), out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and {TEXT_FILE, VISION_FILE, RECORD_FILE} <= names
    info = json.loads((out / "onnx_export.json").read_text())
    assert info["adapter"] is None and Preprocessing.load(out) == Preprocessing(train_flip="none")


@pytest.mark.parametrize("opset", ["3", "21"])
def test_an_unusable_opset_is_refused_before_the_model_loads(opset, tmp_path, capsys):
    """No model is loaded (the model path does not even exist); the message names the range."""
    code = main(["export-onnx", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path), "--opset", opset])
    assert code == 2
    err = capsys.readouterr().err
    assert "--opset" in err and "Traceback" not in err
