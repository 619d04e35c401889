"""Tests for cnclip_lora.adapter.hub and cnclip_lora.adapter.model_card, against a local fake Hub.

Every test name contains "hub" or "push": ``pytest -k "hub or push"`` selects them.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fake_hub import fake_hub  # noqa: F401 - a fixture, used by name
from huggingface_hub import ModelCard

from cnclip_lora.adapter.hub import (
    ADAPTER_FILES,
    check_adapter_dir,
    push_adapter,
    resolve_adapter,
)
from cnclip_lora.adapter.model_card import build_model_card, summarize_lora_weights, write_model_card
from cnclip_lora.commands import main
from cnclip_lora.errors import CnClipLoraError, UnsafeArtifactError

HUB_BASE = "OFA-Sys/chinese-clip-vit-base-patch16"
TEXT_TARGETS = ("query", "key", "value")
VISION_TARGETS = ("q_proj", "k_proj", "v_proj")

# What a shareable adapter folder (as the fixtures below build it) uploads: spelled
# out rather than derived from ADAPTER_FILES, so a change to the allow-list shows.
EXPECTED_LIGHT_UPLOAD = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "cnclip_lora.json",
    "all_results.json",
    "training_args.json",
    "README.md",
}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _fake_lora_weights(path: Path, text_layers: int, vision_layers: int, r: int = 4, hidden: int = 8) -> None:
    """A safetensors file with peft's key layout, without building a model."""
    from safetensors.numpy import save_file

    tensors = {}
    for tower, layers, module_path, targets in (
        ("text_model", text_layers, "encoder.layer.{i}.attention.self.{t}", TEXT_TARGETS),
        ("vision_model", vision_layers, "encoder.layers.{i}.self_attn.{t}", VISION_TARGETS),
    ):
        for i in range(layers):
            for t in targets:
                prefix = f"base_model.model.{tower}.{module_path.format(i=i, t=t)}"
                tensors[f"{prefix}.lora_A.weight"] = np.ones((r, hidden), dtype=np.float32)
                tensors[f"{prefix}.lora_B.weight"] = np.zeros((hidden, r), dtype=np.float32)
    save_file(tensors, str(path))


def _random_metrics(seed: int, gallery_size: int) -> dict:
    rng = random.Random(seed)
    metrics = {"train_loss": rng.uniform(0.5, 3.0), "eval_gallery_size": gallery_size, "epoch": 3.0}
    for direction in ("t2i", "i2t"):
        recalls = sorted(rng.uniform(0.05, 0.95) for _ in range(3))
        metrics.update({f"eval_{direction}_R@{k}": v for k, v in zip((1, 5, 10), recalls)})
        metrics[f"eval_{direction}_MR"] = sum(recalls) / 3
    return metrics


def make_light_run(
    folder: Path,
    *,
    base: str = HUB_BASE,
    text_layers: int = 2,
    vision_layers: int = 2,
    metrics: dict | None = None,
) -> Path:
    """A training output folder with a fake adapter, records and all the clutter a run leaves."""
    folder.mkdir(parents=True, exist_ok=True)
    _fake_lora_weights(folder / "adapter_model.safetensors", text_layers, vision_layers)
    _write_json(
        folder / "adapter_config.json",
        {
            "base_model_name_or_path": base,
            "peft_type": "LORA",
            "r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.05,
            "target_modules": list(TEXT_TARGETS + VISION_TARGETS),
        },
    )
    _write_json(
        folder / "cnclip_lora.json",
        {
            "format_version": 1,
            "base_model": base,
            "preprocessing": {
                "max_length": 52,
                "train_flip": "always",
                "inference_flip": True,
                "exif_transpose": True,
            },
            "data": {
                "data_dir": "/home/someone/private/xfdata",
                "n_train": 4500,
                "n_val": 500,
                "val_gallery_size": 500,
            },
            "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "targets": list(TEXT_TARGETS + VISION_TARGETS)},
        },
    )
    if metrics is not None:
        _write_json(folder / "all_results.json", metrics)
    _write_json(folder / "training_args.json", {"learning_rate": 4e-5})
    # Clutter that must never be shared.
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (folder / "model.safetensors").write_bytes(b"base weights dropped here by mistake")
    (folder / "notes.txt").write_text("scratch")
    (folder / "checkpoint-500").mkdir(exist_ok=True)
    (folder / "checkpoint-500" / "adapter_model.safetensors").write_bytes(b"old")
    (folder / "checkpoint-500" / "README.md").write_text("old card")
    (folder / "runs").mkdir(exist_ok=True)
    (folder / "runs" / "events.out.tfevents.1").write_bytes(b"tb")
    return folder


def _card_yaml(text: str) -> dict:
    return ModelCard(text).data.to_dict()


def _metric_values(card_meta: dict) -> dict[str, float]:
    """``{"eval_t2i_R@1": value, ...}`` back from the card's model-index."""
    values = {}
    for result in card_meta["model-index"][0]["results"]:
        for metric in result["metrics"]:
            direction, name = metric["name"].split(" ")
            values[f"eval_{direction}_{name}"] = metric["value"]
    return values


# -- model card ---------------------------------------------------------------------------
def test_hub_card_metadata_and_metrics_match_results(tmp_path):
    metrics = _random_metrics(seed=3, gallery_size=437)
    run = make_light_run(tmp_path / "run", metrics=metrics)
    text = build_model_card(run, repo_id="user/cnclip-demo", license="apache-2.0")
    meta = _card_yaml(text)

    assert meta["library_name"] == "peft"
    assert meta["base_model"] == HUB_BASE
    assert meta["license"] == "apache-2.0"
    assert {"chinese-clip", "lora", "peft", "text-to-image-retrieval", "cnclip-lora"} <= set(meta["tags"])
    recalls = {k: v for k, v in metrics.items() if re.fullmatch(r"eval_(t2i|i2t)_(R@\d+|MR)", k)}
    assert _metric_values(meta) == recalls
    for result in meta["model-index"][0]["results"]:
        assert result["dataset"]["args"]["gallery_size"] == 437
        assert result["dataset"]["split"] == "validation"

    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| t")}
    t2i_row = rows["text-to-image"].split("|")
    assert [float(c) for c in t2i_row[2:6]] == pytest.approx(
        [metrics[f"eval_t2i_{k}"] for k in ("R@1", "R@5", "R@10", "MR")], abs=1e-4
    )
    assert t2i_row[6].strip() == "437"
    assert "gallery of 437 images" in text
    assert "/home/someone" not in text  # only the data folder's name is published


def test_hub_card_without_metrics_says_not_evaluated(tmp_path):
    run = make_light_run(tmp_path / "run", metrics=None)
    text = build_model_card(run)
    meta = _card_yaml(text)
    assert "model-index" not in meta
    assert "license" not in meta
    assert "Not evaluated" in text
    assert "R@1 |" not in text


def test_hub_card_counts_lora_modules_per_tower(tmp_path):
    run = make_light_run(tmp_path / "run", text_layers=3, vision_layers=0)
    towers = summarize_lora_weights(run / "adapter_model.safetensors")
    assert towers["text"]["modules"] == 9
    assert dict(towers["text"]["targets"]) == {t: 3 for t in TEXT_TARGETS}
    assert towers["text"]["parameters"] == 9 * 2 * 4 * 8
    assert towers["vision"]["modules"] == 0
    text = build_model_card(run)
    assert re.search(r"\| text \| 9 \|", text)
    assert "No LoRA module in the vision tower" in text


def test_hub_card_local_base_is_not_hub_metadata(tmp_path):
    base_dir = tmp_path / "my-local-base"
    base_dir.mkdir()
    run = make_light_run(tmp_path / "run", base=str(base_dir))
    text = build_model_card(run, repo_id="user/x")
    assert "base_model" not in _card_yaml(text)
    assert "my-local-base" in text and str(tmp_path) not in text


def test_hub_card_rejects_broken_metrics_file(tmp_path):
    run = make_light_run(tmp_path / "run")
    (run / "all_results.json").write_text("{not json")
    with pytest.raises(CnClipLoraError, match=r"all_results\.json"):
        build_model_card(run)


def test_hub_write_model_card_replaces_readme(tmp_path):
    run = make_light_run(tmp_path / "run", metrics=_random_metrics(seed=1, gallery_size=50))
    (run / "README.md").write_text("old peft card")
    path = write_model_card(run, repo_id="user/abc")
    assert path == run / "README.md"
    assert path.read_text(encoding="utf-8") == build_model_card(run, repo_id="user/abc")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# -- push ---------------------------------------------------------------------------------
def test_push_uploads_exactly_the_allow_list(tmp_path, fake_hub):
    run = make_light_run(tmp_path / "run", metrics=_random_metrics(seed=2, gallery_size=500))
    url = push_adapter(run, "user/cnclip-adapter", commit_message="first adapter")

    (commit,) = fake_hub.commits
    assert commit["files"] == sorted(EXPECTED_LIGHT_UPLOAD)
    assert commit["kinds"] == ["file", "header"]  # inline regular files only, no LFS pointer
    assert commit["summary"] == "first adapter"
    sha = fake_hub.repos["user/cnclip-adapter"].branches["main"]
    assert url.endswith(f"/user/cnclip-adapter/commit/{sha}")
    files = fake_hub.files("user/cnclip-adapter")
    assert set(files) == EXPECTED_LIGHT_UPLOAD | {".gitattributes"}
    assert files["README.md"] == (run / "README.md").read_bytes()
    assert files["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    assert _card_yaml(files["README.md"].decode())["base_model"] == HUB_BASE
    assert not fake_hub.repos["user/cnclip-adapter"].private
    assert fake_hub.unknown == []


def test_push_twice_to_a_private_branch(tmp_path, fake_hub):
    fake_hub.required_token = "hf_writer"  # a private repo is invisible without a token
    run = make_light_run(tmp_path / "run")
    push_adapter(run, "user/exp", private=True, revision="exp-1", token="hf_writer")
    # repo and branch already exist: both creations must tolerate it
    push_adapter(run, "user/exp", revision="exp-1", commit_message="again", token="hf_writer")

    repo = fake_hub.repos["user/exp"]
    assert repo.private
    assert set(fake_hub.files("user/exp", "main")) == {".gitattributes"}
    assert "adapter_model.safetensors" in fake_hub.files("user/exp", "exp-1")
    assert [c["revision"] for c in fake_hub.commits] == ["exp-1", "exp-1"]
    assert fake_hub.unknown == []


def test_push_refuses_pickled_only_adapter(tmp_path, fake_hub):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    _write_json(run / "adapter_config.json", {"base_model_name_or_path": HUB_BASE, "r": 4})
    with pytest.raises(UnsafeArtifactError, match=r"only pickled weights \(adapter_model\.bin\).*safetensors"):
        push_adapter(run, "user/bad")
    assert fake_hub.requests == []
    assert not (run / "README.md").exists()


def test_push_requires_adapter_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CnClipLoraError, match="has no adapter_model.safetensors"):
        push_adapter(empty, "user/x")
    run = make_light_run(tmp_path / "run")
    (run / "adapter_config.json").unlink()
    with pytest.raises(CnClipLoraError, match="has no adapter_config.json"):
        push_adapter(run, "user/x")
    with pytest.raises(CnClipLoraError, match="does not exist"):
        push_adapter(tmp_path / "missing", "user/x")


def test_push_rejects_invalid_repo_id(tmp_path, fake_hub):
    run = make_light_run(tmp_path / "run")
    with pytest.raises(CnClipLoraError, match=r"--repo_id 'user/a/b' is not a valid Hub repo id"):
        push_adapter(run, "user/a/b")
    assert fake_hub.requests == []


def test_push_failure_does_not_leak_the_token(tmp_path, fake_hub, caplog):
    secret = "hf_FAKEsecretTOKEN0123456789"
    fake_hub.required_token = "hf_the_right_one"
    fake_hub.echo_auth_in_errors = True  # even a server echoing it must not get it into our message
    run = make_light_run(tmp_path / "run", metrics=_random_metrics(seed=4, gallery_size=10))
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    hf_logger = logging.getLogger("huggingface_hub")
    hf_logger.addHandler(caplog.handler)  # in case huggingface_hub stops propagating to the root logger
    try:
        with pytest.raises(CnClipLoraError, match=r"Pushing .* to user/secret-test@main .* failed") as info:
            push_adapter(run, "user/secret-test", token=secret)
    finally:
        hf_logger.removeHandler(caplog.handler)

    assert f"Bearer {secret}" in fake_hub.auth_headers  # the token really was used
    assert secret not in str(info.value)
    assert "Bearer ***" in str(info.value)  # the echoed header reached the message, redacted
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert secret not in caplog.text
    assert not (run / "README.md").exists()  # a push refused by the Hub leaves the folder as it was


def test_push_token_comes_from_hf_token_env(tmp_path, fake_hub, monkeypatch):
    fake_hub.required_token = "hf_from_environment"
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    run = make_light_run(tmp_path / "run")
    push_adapter(run, "user/env-token")
    assert fake_hub.commits and set(fake_hub.auth_headers) == {"Bearer hf_from_environment"}

    # A token from the environment is redacted from error messages as well.
    fake_hub.required_token, fake_hub.echo_auth_in_errors = "hf_another_one", True
    with pytest.raises(CnClipLoraError, match=r"Bearer \*\*\*") as info:
        push_adapter(run, "user/env-token-2")
    assert "hf_from_environment" not in str(info.value)


def test_push_bare_name_goes_to_the_token_namespace(tmp_path, fake_hub):
    run = make_light_run(tmp_path / "run")
    url = push_adapter(run, "bare-adapter")  # as train.py does with the output folder's name
    assert fake_hub.commits[0]["repo_id"] == "user/bare-adapter"
    assert "/user/bare-adapter/commit/" in url
    assert 'adapter="user/bare-adapter"' in (run / "README.md").read_text(encoding="utf-8")


def test_push_cli_arguments(tmp_path, fake_hub, capsys):
    fake_hub.required_token = "hf_cli"
    run = make_light_run(tmp_path / "run", metrics=_random_metrics(seed=5, gallery_size=20))
    argv = [str(run), "--repo_id", "user/cli", "--private", "--license", "mit", "--commit_message", "from cli"]
    assert main(["push", *argv, "--token", "hf_cli"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"/user/cli/commit/{fake_hub.repos['user/cli'].branches['main']}")
    assert fake_hub.repos["user/cli"].private
    assert fake_hub.commits[0]["summary"] == "from cli"
    assert _card_yaml(fake_hub.files("user/cli")["README.md"].decode())["license"] == "mit"
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(run)])  # --repo_id is required
    assert exit_.value.code == 2 and "--repo_id" in capsys.readouterr().err


# -- resolve ------------------------------------------------------------------------------
def test_hub_resolve_downloads_then_serves_offline(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import constants

    run = make_light_run(tmp_path / "run", metrics=_random_metrics(seed=6, gallery_size=30))
    push_adapter(run, "user/offline-demo")
    path = resolve_adapter("user/offline-demo")

    assert Path(constants.HF_HUB_CACHE) in path.parents  # the isolated cache, not ~/.cache
    assert {p.name for p in path.iterdir()} == EXPECTED_LIGHT_UPLOAD  # allow-list only, no .gitattributes
    assert (path / "adapter_model.safetensors").read_bytes() == (run / "adapter_model.safetensors").read_bytes()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(fake_hub.requests)
    assert resolve_adapter("user/offline-demo") == path
    assert len(fake_hub.requests) == seen  # served from the cache without touching the network
    with pytest.raises(CnClipLoraError, match=r"'user/never-downloaded'.*not in the local cache"):
        resolve_adapter("user/never-downloaded")


def test_hub_resolve_local_dir_and_errors(tmp_path, fake_hub):
    run = make_light_run(tmp_path / "run")
    assert resolve_adapter(str(run)) == run
    assert fake_hub.requests == []  # a local folder never touches the Hub

    with pytest.raises(CnClipLoraError, match=r"--adapter '/nowhere/at/all': adapter folder not found"):
        resolve_adapter("/nowhere/at/all")
    with pytest.raises(CnClipLoraError, match=r"'user/absent' is neither a local directory nor a model repo"):
        resolve_adapter("user/absent")
    push_adapter(run, "user/present")
    with pytest.raises(CnClipLoraError, match=r"'user/present' has no revision 'nope'"):
        resolve_adapter("user/present", revision="nope")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.pth").write_bytes(b"x")
    with pytest.raises(UnsafeArtifactError, match=r"adapter_model\.pth"):
        resolve_adapter(str(pickled))


def test_hub_resolve_refuses_pickled_only_repo(tmp_path, fake_hub):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo("user/pickled")
    api.create_commit(
        "user/pickled",
        operations=[
            CommitOperationAdd(path_in_repo="adapter_model.bin", path_or_fileobj=b"\x80\x04pickle"),
            CommitOperationAdd(path_in_repo="adapter_config.json", path_or_fileobj=b'{"r": 4}'),
        ],
        commit_message="pickled adapter",
    )
    with pytest.raises(
        UnsafeArtifactError, match=r"'user/pickled' has no adapter_model\.safetensors.*adapter_model\.bin"
    ):
        resolve_adapter("user/pickled")
    downloaded = [p for p in Path(tmp_path / "hf_home").rglob("adapter_model.bin")]
    assert downloaded == []  # the pickle was never fetched


def test_hub_adapter_files_are_top_level_names():
    assert all("/" not in name and "*" not in name for name in ADAPTER_FILES)
    assert not {"training_args.bin", "model.safetensors", "adapter_model.bin"} & set(ADAPTER_FILES)


# -- round trip with a real (tiny) Chinese-CLIP ---------------------------------------------
def _embed(model, run) -> tuple:
    import torch

    def features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        text = features(model.get_text_features(**run.text_inputs))
        image = features(model.get_image_features(pixel_values=run.pixel_values))
    return text, image


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """The shared tiny Chinese-CLIP as base, a LoRA adapter with non-zero B, and its output folder."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    root = tmp_path_factory.mktemp("tiny_run")
    base = ChineseCLIPModel.from_pretrained(tiny_model_dir).eval()
    model = get_peft_model(
        ChineseCLIPModel.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=list(TEXT_TARGETS + VISION_TARGETS)),
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.eval()
    processor = ChineseCLIPProcessor.from_pretrained(tiny_model_dir)
    out = root / "out"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _write_json(
        out / "cnclip_lora.json",
        {
            "format_version": 1,
            "base_model": str(tiny_model_dir),
            "preprocessing": {
                "max_length": 16,
                "train_flip": "always",
                "inference_flip": True,
                "exif_transpose": True,
            },
            "data": {"data_dir": str(root / "xfdata"), "n_train": 8, "n_val": 4, "val_gallery_size": 4},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": list(TEXT_TARGETS + VISION_TARGETS)},
        },
    )
    _write_json(out / "all_results.json", _random_metrics(seed=7, gallery_size=4))
    (out / "training_args.bin").write_bytes(b"\x80\x04pickle")

    size = processor.image_processor.size["height"]
    run = SimpleNamespace(
        base_dir=tiny_model_dir,
        out=out,
        tokenizer=processor.tokenizer,
        text_inputs=dict(
            processor.tokenizer(["新款连衣裙", "男鞋秋冬"], padding="max_length", max_length=16, return_tensors="pt")
        ),
        pixel_values=torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)),
    )
    run.reference = _embed(model, run)
    run.base_embeddings = _embed(base, run)
    return run


def _run_card_snippet(readme: Path, marker: str, base_dir: Path) -> dict:
    """Execute the card's python block containing ``marker``, the local base filled in."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    (snippet,) = [block for block in blocks if marker in block]
    namespace: dict = {}
    exec(snippet.replace("<base Chinese-CLIP model>", str(base_dir)), namespace)  # noqa: S102
    return namespace


def test_push_round_trip_reproduces_embeddings(tiny_run, tmp_path, fake_hub):
    import torch
    from peft import PeftModel
    from transformers import ChineseCLIPModel

    out = tmp_path / "out"
    shutil.copytree(tiny_run.out, out)
    push_adapter(out, "user/tiny-adapter")
    assert set(fake_hub.commits[0]["files"]) == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "cnclip_lora.json",
        "all_results.json",
        "README.md",
    }

    path = resolve_adapter("user/tiny-adapter")
    loaded = PeftModel.from_pretrained(ChineseCLIPModel.from_pretrained(tiny_run.base_dir), path).eval()
    for got, want, base in zip(_embed(loaded, tiny_run), tiny_run.reference, tiny_run.base_embeddings):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        assert (want - base).abs().max() > 1e-3  # the adapter really changes both towers

    # The card's plain-peft snippet, with the local base filled in, loads the same model from the Hub.
    namespace = _run_card_snippet(path / "README.md", "PeftModel", tiny_run.base_dir)
    for got, want in zip(_embed(namespace["model"], tiny_run), tiny_run.reference):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # merged weights: float rounding only
    assert namespace["processor"].tokenizer("新款")["input_ids"] == tiny_run.tokenizer("新款")["input_ids"]
    assert fake_hub.unknown == []


def test_hub_check_adapter_dir_accepts_peft_output(tiny_run):
    assert check_adapter_dir(tiny_run.out) == tiny_run.out
    towers = summarize_lora_weights(tiny_run.out / "adapter_model.safetensors")
    assert (towers["text"]["modules"], towers["vision"]["modules"]) == (6, 6)


def test_hub_card_cnclip_snippet_loads_the_pushed_adapter(tiny_run, tmp_path, fake_hub, monkeypatch):
    import torch
    from PIL import Image

    import cnclip_lora

    assert hasattr(cnclip_lora, "RetrievalModel")
    out = tmp_path / "out"
    shutil.copytree(tiny_run.out, out)
    push_adapter(out, "user/tiny-snippet")
    work = tmp_path / "work"  # the snippet embeds "image.jpg" from the working directory
    work.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(work / "image.jpg")
    monkeypatch.chdir(work)
    namespace = _run_card_snippet(out / "README.md", "RetrievalModel", tiny_run.base_dir)
    model = namespace["model"]
    assert isinstance(model, cnclip_lora.RetrievalModel)
    for got, want in zip(_embed(model.model, tiny_run), tiny_run.reference):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    preprocessing = model.preprocessing  # the recorded rule comes back with the model
    assert (preprocessing.max_length, preprocessing.inference_flip) == (16, True)
    assert np.asarray(namespace["scores"]).shape == (1, 1)


def test_push_to_hub_at_the_end_of_training_uploads_only_the_adapter_set(tmp_path, fake_hub, tiny_model_dir, demo_dir):
    from cnclip_lora.commands.train import train_from_argv

    out = tmp_path / "run"
    argv = []
    for key, value in {
        "model_name_or_path": tiny_model_dir,
        "data_dir": demo_dir,
        "output_dir": out,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "lora_r": 4,
        "lora_alpha": 8,
        "use_cpu": "true",
        "save_strategy": "steps",
        "save_steps": 1,
        "report_to": "none",
        "push_to_hub": "true",
        "hub_model_id": "user/trained-adapter",
    }.items():
        argv += [f"--{key}", str(value)]
    result = train_from_argv(argv)

    assert result.pushed_to and "user/trained-adapter" in result.pushed_to
    assert (out / "checkpoint-2").is_dir()  # checkpoints exist locally...
    (commit,) = fake_hub.commits  # ...but exactly one commit was pushed, at the end
    files = set(fake_hub.files("user/trained-adapter"))
    assert {"adapter_model.safetensors", "adapter_config.json", "cnclip_lora.json", "README.md"} <= files
    assert not any(name.startswith("checkpoint-") or name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert "model.safetensors" not in files
    assert files <= set(ADAPTER_FILES) | {".gitattributes"}
