"""Caches that cannot lie: a damaged, emptied or swapped cache file is noticed, said, and rebuilt, so
the results equal an uncached run; an edited processor is a new cache key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cnclip_lora.inference.model import RetrievalModel

TITLES = ["红色连衣裙", "黑色波点衬衫", "白色T恤"]


def _images(demo_dir: Path, n: int = 12) -> list[str]:
    return [str(p) for p in sorted((demo_dir / "image").glob("*.jpg"))[:n]]


@pytest.fixture
def cached(tiny_model_dir, tmp_path):
    """A model with an embedding cache in tmp_path, and the cache files its first calls wrote."""
    model = RetrievalModel.from_pretrained(str(tiny_model_dir), device="cpu", cache_dir=str(tmp_path / "emb"))
    return model, tmp_path / "emb"


def _damage(path: Path, how: str, other: Path | None = None) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not an arrow file" * 50)
    elif how == "swapped":
        path.write_bytes(other.read_bytes())


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "swapped"])
def test_a_damaged_image_embedding_cache_is_rebuilt_with_a_warning(cached, demo_dir, how, caplog):
    model, folder = cached
    images = _images(demo_dir)
    first = model.encode_images(images)
    (image_file,) = folder.glob("*.arrow")  # the only file so far
    model.encode_texts(TITLES)
    (text_file,) = (p for p in folder.glob("*.arrow") if p != image_file)
    _damage(image_file, how, other=text_file)
    with caplog.at_level(logging.WARNING):
        again = model.encode_images(images)
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert "embedding cache file" in caplog.text and image_file.name in caplog.text
    # rebuilt: the next call is a clean hit, without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(model.encode_images(images), first, atol=1e-6)
    assert "damaged" not in caplog.text


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_a_damaged_text_embedding_cache_is_rebuilt(cached, how, caplog):
    model, folder = cached
    first = model.encode_texts(TITLES)
    (cache_file,) = folder.glob("*.arrow")
    _damage(cache_file, how)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(model.encode_texts(TITLES), first, atol=1e-6)
    assert "embedding cache file" in caplog.text


def test_an_edited_processor_is_a_new_cache_key(tiny_model_dir, tmp_path, demo_dir):
    """Editing preprocessor_config.json in place (weights untouched) must not serve the old embeddings."""
    import shutil

    local = tmp_path / "model"
    shutil.copytree(tiny_model_dir, local)
    images = _images(demo_dir, 4)
    before = RetrievalModel.from_pretrained(str(local), device="cpu", cache_dir=str(tmp_path / "emb"))
    old = before.encode_images(images)
    config = json.loads((local / "preprocessor_config.json").read_text())
    config["image_mean"] = [0.0, 0.0, 0.0]
    (local / "preprocessor_config.json").write_text(json.dumps(config))
    after = RetrievalModel.from_pretrained(str(local), device="cpu", cache_dir=str(tmp_path / "emb"))
    assert after.fingerprint("image", images) != before.fingerprint("image", images)
    uncached = RetrievalModel.from_pretrained(str(local), device="cpu").encode_images(images)
    np.testing.assert_allclose(after.encode_images(images), uncached, atol=1e-6)
    assert not np.allclose(uncached, old, atol=1e-4)


def test_weights_replaced_with_the_same_size_and_mtime_are_a_new_cache_key(tiny_model_dir, tmp_path, demo_dir):
    """Other weights copied over the checkpoint with its size and timestamps restored (``cp -p``,
    rsync): the cache is keyed by content, so the new model's embeddings are computed."""
    import os
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    local = tmp_path / "model"
    shutil.copytree(tiny_model_dir, local)
    weights = next(local.glob("*.safetensors"))
    images = _images(demo_dir, 4)
    before = RetrievalModel.from_pretrained(str(local), device="cpu", cache_dir=str(tmp_path / "emb"))
    old = before.encode_images(images)
    key = before.fingerprint("image", images)
    st = weights.stat()
    tensors = load_file(weights)
    name = next(k for k in tensors if "visual_projection" in k)
    tensors[name] = torch.flip(tensors[name], dims=[0]).contiguous()  # same shapes, so the same size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == st.st_size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = RetrievalModel.from_pretrained(str(local), device="cpu", cache_dir=str(tmp_path / "emb"))
    assert after.fingerprint("image", images) != key
    uncached = RetrievalModel.from_pretrained(str(local), device="cpu").encode_images(images)
    np.testing.assert_allclose(after.encode_images(images), uncached, atol=1e-6)
    assert not np.allclose(uncached, old, atol=1e-4)


def test_content_digests_are_computed_once_per_file_version(tmp_path):
    from cnclip_lora.utils.caches import DIGEST_MEMO, content_digest

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = content_digest(f, tmp_path / "memo")
    memo = json.loads((tmp_path / "memo" / DIGEST_MEMO).read_text())
    assert list(memo.values()) == [first]
    # A memo entry is trusted while the file's stat identity holds (no re-read) ...
    key = next(iter(memo))
    (tmp_path / "memo" / DIGEST_MEMO).write_text(json.dumps({key: "remembered"}))
    assert content_digest(f, tmp_path / "memo") == "remembered"
    # ... and a write (even one that keeps size and mtime) re-hashes and replaces the old entry.
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    import os

    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = content_digest(f, tmp_path / "memo")
    assert second not in (first, "remembered")
    assert list(json.loads((tmp_path / "memo" / DIGEST_MEMO).read_text()).values()) == [second]
    (tmp_path / "memo" / DIGEST_MEMO).write_text("{not json")  # a damaged memo is only a slower run
    assert content_digest(f, tmp_path / "memo") == second


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_a_damaged_pixel_cache_is_rebuilt_with_a_warning(demo_dir, processor, tmp_path, how, caplog):
    from cnclip_lora.training.pixel_cache import build_pixel_cache

    names = [Path(p).name for p in _images(demo_dir, 10)]
    first = build_pixel_cache(demo_dir / "image", names, processor.image_processor, cache_dir=tmp_path)
    pixels = first.get(names).copy()
    files = sorted(tmp_path.glob("pixels-*.arrow"))
    assert files
    del first
    _damage(files[0], how)
    with caplog.at_level(logging.WARNING):
        again = build_pixel_cache(demo_dir / "image", names, processor.image_processor, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.get(names), pixels)
    assert "pixel cache" in caplog.text


def test_cache_clear_through_a_symlinked_folder_removes_the_link_only(tmp_path, monkeypatch, capsys):
    """A cache folder that is a link to elsewhere: ``cache --clear`` removes the link, keeps the target."""
    from cnclip_lora.commands import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    root = tmp_path / "hf" / "cnclip_lora"
    root.mkdir(parents=True)
    (root / "embeddings").symlink_to(elsewhere, target_is_directory=True)
    assert main(["cache", "--clear"]) == 0
    assert (elsewhere / "keep.txt").read_text() == "mine"
    assert not (root / "embeddings").exists()
    assert "Traceback" not in capsys.readouterr().err
