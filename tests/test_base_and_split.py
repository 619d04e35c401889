"""An adapter is used only with the base it was trained on, and evaluated on the split it was validated on."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cnclip_lora.commands import main
from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.demo.tiny_model import make_tiny_model
from cnclip_lora.errors import ConfigError
from cnclip_lora.inference.model import RetrievalModel
from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval


@pytest.fixture(scope="module")
def split_adapter(tiny_model_dir, demo_dir, tmp_path_factory) -> Path:
    """Trained with a non-default split: 20 held-out images, seed 7."""
    out = tmp_path_factory.mktemp("split-adapter") / "out"
    train_from_argv(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--data_dir",
            str(demo_dir),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--val_size",
            "20",
            "--split_seed",
            "7",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--report_to",
            "none",
        ]
    )
    return out


@pytest.fixture(scope="module")
def other_bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "other_weights": make_tiny_model(root / "seed1", seed=1),
        "other_image_size": make_tiny_model(root / "img32", seed=0, image_size=32),
    }


def _args(model: Path, adapter: Path, data: Path, **kw) -> EvaluateArguments:
    return EvaluateArguments(
        model_name_or_path=str(model), adapter=str(adapter), data_dir=str(data), cache_dir="", device="cpu", **kw
    )


# --- item 1: base identity -----------------------------------------------------------------


def test_training_records_the_base_identity(split_adapter):
    record = json.loads((split_adapter / "cnclip_lora.json").read_text())
    identity = record["base_identity"]
    assert identity["architecture"]["vision.image_size"] == 64
    assert len(identity["vocab_sha256"]) == 64
    assert identity["weights"]  # a fingerprint of some fixed tensors


def test_the_right_base_loads(split_adapter, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        RetrievalModel.from_pretrained(str(tiny_model_dir), str(split_adapter), device="cpu")
    assert "base" not in caplog.text


def test_same_base_in_bfloat16_still_matches(split_adapter, tiny_model_dir, caplog):
    """Loading the recorded base in another dtype is the same base: no refusal, no warning, and the
    merged model embeds in that dtype."""
    with caplog.at_level(logging.WARNING):
        model = RetrievalModel.from_pretrained(str(tiny_model_dir), str(split_adapter), device="cpu", dtype="bfloat16")
    assert "base" not in caplog.text
    assert model.dtype == "torch.bfloat16"
    embeds = model.encode_texts(["红色连衣裙"])
    assert embeds.shape[0] == 1 and abs(float((embeds**2).sum()) - 1.0) < 1e-3


def test_a_base_of_another_architecture_is_refused_naming_both(split_adapter, tiny_model_dir, other_bases, demo_dir):
    other = other_bases["other_image_size"]
    for allow in (False, True):  # no flag makes a different architecture usable
        with pytest.raises(ConfigError, match=r"trained on .*model.*at 64px.*img32.*at 32px.*different architecture"):
            evaluate_retrieval(_args(other, split_adapter, demo_dir, allow_different_base=allow))


def test_same_architecture_other_weights_is_refused_unless_allowed(
    split_adapter, other_bases, demo_dir, tmp_path, capsys, caplog
):
    other = other_bases["other_weights"]
    out = tmp_path / "submit.csv"
    argv = [
        "retrieve",
        "--model_name_or_path",
        str(other),
        "--adapter",
        str(split_adapter),
        "--data_dir",
        str(demo_dir),
        "--output",
        str(out),
        "--cache_dir",
        "",
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "same architecture but other weights" in err and "--allow_different_base" in err
    assert "Traceback" not in err and not out.exists()
    with caplog.at_level(logging.WARNING):
        assert main(argv + ["--allow_different_base", "true"]) == 0
    assert out.is_file() and "other weights" in caplog.text


def test_an_adapter_without_a_record_loads_with_a_warning(split_adapter, tiny_model_dir, tmp_path, caplog):
    old = tmp_path / "old-adapter"
    shutil.copytree(split_adapter, old)
    (old / "cnclip_lora.json").unlink()
    with caplog.at_level(logging.WARNING):
        RetrievalModel.from_pretrained(str(tiny_model_dir), str(old), device="cpu")
    assert "records no base model identity" in caplog.text


def test_changed_weights_are_caught(split_adapter, tiny_model_dir, tmp_path):
    # A copy of the right base with one projection re-initialised: same config, same vocabulary.
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    weights = load_file(changed / "model.safetensors")
    weights["visual_projection.weight"] = torch.randn_like(weights["visual_projection.weight"])
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"visual_projection\.weight differs"):
        RetrievalModel.from_pretrained(str(changed), str(split_adapter), device="cpu")


# --- item 2: the recorded split ---------------------------------------------------------------


def test_evaluate_val_uses_the_recorded_split(split_adapter, tiny_model_dir, demo_dir):
    record = json.loads((split_adapter / "cnclip_lora.json").read_text())["split"]
    assert record["val_size"] == 20 and record["split_seed"] == 7 and record["n_held_out_images"] == 20
    metrics = evaluate_retrieval(_args(tiny_model_dir, split_adapter, demo_dir))
    default_split = evaluate_retrieval(
        EvaluateArguments(model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), cache_dir="", device="cpu")
    )
    # Queries = captions of the 20 held-out images (one caption each in the demo data), not the default 10 %.
    assert metrics["val_queries"] == 20
    assert default_split["val_queries"] != 20


def test_evaluate_val_refuses_another_split_unless_asked(split_adapter, tiny_model_dir, demo_dir):
    with pytest.raises(ConfigError, match=r"--val_size 0.1 \(trained with 20\)"):
        evaluate_retrieval(_args(tiny_model_dir, split_adapter, demo_dir, val_size=0.1))
    with pytest.raises(ConfigError, match=r"--split_seed 42 \(trained with 7\)"):
        evaluate_retrieval(_args(tiny_model_dir, split_adapter, demo_dir, split_seed=42))
    metrics = evaluate_retrieval(
        _args(tiny_model_dir, split_adapter, demo_dir, val_size=10, allow_different_split=True)
    )
    assert metrics["val_queries"] == 10


def test_evaluate_val_refuses_changed_data(split_adapter, tiny_model_dir, demo_dir, tmp_path):
    data = tmp_path / "xfdata"
    shutil.copytree(demo_dir, data)
    lines = (data / "train.csv").read_text(encoding="utf-8").splitlines()
    (data / "train.csv").write_text("\n".join(lines[:-6]) + "\n", encoding="utf-8")  # six pairs fewer
    with pytest.raises(ConfigError, match="held-out images .* differ"):
        evaluate_retrieval(_args(tiny_model_dir, split_adapter, data))
