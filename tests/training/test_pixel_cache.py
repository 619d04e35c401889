"""The decoded-once pixel cache: same batches as decoding, reused by fingerprint, never silent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnclip_lora.training.pixel_cache as pixel_cache_mod
from cnclip_lora.errors import ConfigError, DataError
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.modeling import load_model_and_processor
from cnclip_lora.training.pixel_cache import build_pixel_cache, pixel_cache_bytes, should_cache


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_model_and_processor(str(tiny_model_dir))[1]


def _images(root: Path, n: int = 10, seed: int = 0) -> list[str]:
    """Random-noise images of several sizes and formats (noise makes any resampling slip visible)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        w, h = [(224, 224), (300, 181), (57, 90), (640, 33)][i % 4]
        name = f"im{i}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


@pytest.mark.parametrize("flip", ["always", "random", "none"])
def test_cached_batches_equal_decoded_batches(processor, tmp_path, flip):
    names = _images(tmp_path / "image")
    rows = [{"title": f"红色连衣裙{i}", "path": n} for i, n in enumerate(names + names[:3])]  # repeated images too
    cache = build_pixel_cache(
        tmp_path / "image", [r["path"] for r in rows], processor.image_processor, cache_dir=tmp_path / "c"
    )
    assert len(cache) == len(names)  # one entry per distinct image
    plain = ImageTextCollator(processor, tmp_path / "image", flip=flip)
    cached = ImageTextCollator(processor, tmp_path / "image", flip=flip, pixel_cache=cache)
    torch.manual_seed(3)
    a = plain(rows)
    torch.manual_seed(3)
    b = cached(rows)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if flip == "always":  # and the flip really happened: a mirrored noise image differs from the original
        unflipped = ImageTextCollator(processor, tmp_path / "image", flip="none", pixel_cache=cache)(rows)
        assert not torch.equal(unflipped["pixel_values"], b["pixel_values"])
        assert torch.equal(unflipped["pixel_values"].flip(-1), b["pixel_values"])


def test_cache_is_reused_until_an_image_changes(processor, tmp_path, monkeypatch):
    names = _images(tmp_path / "image", n=4)
    first = build_pixel_cache(tmp_path / "image", names, processor.image_processor, cache_dir=tmp_path / "c")
    files = sorted(os.listdir(tmp_path / "c"))
    assert files and all(f.startswith("pixels-") for f in files)

    calls = []
    real = pixel_cache_mod.decode_resized
    monkeypatch.setattr(pixel_cache_mod, "decode_resized", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_pixel_cache(tmp_path / "image", names, processor.image_processor, cache_dir=tmp_path / "c")
    assert calls == []  # loaded from the Arrow file: nothing decoded
    assert np.array_equal(again.get(names), first.get(names))

    # Replace one image: a new fingerprint, a new decode, the new pixels.
    Image.new("RGB", (224, 224), (255, 0, 0)).save(tmp_path / "image" / names[1])
    changed = build_pixel_cache(tmp_path / "image", names, processor.image_processor, cache_dir=tmp_path / "c")
    assert calls
    assert not np.array_equal(changed.get([names[1]]), first.get([names[1]]))
    assert (changed.get([names[1]])[0, :, :, 0] > 200).all()  # red now


def test_cache_file_holds_raw_pixels_without_per_row_overhead(processor, tmp_path):
    names = _images(tmp_path / "image", n=40)
    cache = build_pixel_cache(tmp_path / "image", names, processor.image_processor, cache_dir=tmp_path / "c")
    on_disk = sum(f.stat().st_size for f in (tmp_path / "c").iterdir())
    raw = pixel_cache_bytes(len(names), processor.image_processor)
    assert raw == 40 * 64 * 64 * 3
    assert raw <= on_disk < 1.1 * raw + 64 * 1024
    assert cache.get(names[:5]).shape == (5, 64, 64, 3) and cache.get(names[:5]).dtype == np.uint8


def test_corrupt_image_names_the_file(processor, tmp_path):
    names = _images(tmp_path / "image", n=3)
    (tmp_path / "image" / names[2]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=names[2]):
        build_pixel_cache(tmp_path / "image", names, processor.image_processor, cache_dir=tmp_path / "c")


def test_should_cache_decides_and_says_why(processor):
    ip = processor.image_processor
    assert should_cache("auto", n_images=100, epochs=3, image_processor=ip)[0] is True
    use, why = should_cache("auto", n_images=100, epochs=1, image_processor=ip)
    assert use is False and "at most once" in why
    use, why = should_cache("auto", n_images=10**6, epochs=30, image_processor=ip, max_gb=1)
    assert use is False and "exceeds" in why
    assert should_cache("true", n_images=5, epochs=1, image_processor=ip)[0] is True
    assert should_cache("false", n_images=5, epochs=30, image_processor=ip)[0] is False
    with pytest.raises(ConfigError, match="--cache_images"):
        should_cache("sometimes", n_images=5, epochs=3, image_processor=ip)


def test_crop_processors_cannot_be_forced_to_cache():
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    crop = ChineseCLIPImageProcessorPil()  # class defaults: shortest-edge resize + centre crop
    assert should_cache("auto", n_images=5, epochs=30, image_processor=crop)[0] is False
    with pytest.raises(ConfigError, match="squash resize"):
        should_cache("true", n_images=5, epochs=30, image_processor=crop)


def test_training_builds_the_cache_once_and_records_it(tiny_model_dir, demo_dir, tmp_path):
    from cnclip_lora.training.run import train

    common = dict(
        model_name_or_path=str(tiny_model_dir),
        data_dir=str(demo_dir),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_train_epochs=2,
        val_size=0,
        save_strategy="no",
        cache_dir=str(tmp_path / "pc"),
        check_images=False,
    )
    result = train(output_dir=str(tmp_path / "out"), **common)
    record = json.loads((result.output_dir / "cnclip_lora.json").read_text())
    assert record["data"]["pixel_cache"] is True
    files = sorted((tmp_path / "pc").iterdir())
    assert files
    # A second run (other output) finds the same file by fingerprint instead of writing another.
    train(output_dir=str(tmp_path / "out2"), **common)
    assert sorted((tmp_path / "pc").iterdir()) == files
    off = train(output_dir=str(tmp_path / "out3"), cache_images="false", **common)
    assert json.loads((off.output_dir / "cnclip_lora.json").read_text())["data"]["pixel_cache"] is False


def test_evaluation_gallery_is_cached_and_scores_the_same(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """With evaluation every epoch, the validation gallery is decoded once too; cached and
    uncached runs train on identical batches, so adapters and metrics agree exactly."""
    from safetensors.torch import load_file

    from cnclip_lora.training.run import train

    common = dict(
        model_name_or_path=str(tiny_model_dir),
        data_dir=str(demo_dir),
        use_cpu=True,
        seed=0,
        per_device_train_batch_size=8,
        num_train_epochs=2,
        val_size=8,
        eval_strategy="epoch",
        save_strategy="no",
        cache_dir=str(tmp_path / "pc"),
        check_images=False,
        learning_rate=1e-3,
    )
    import cnclip_lora.inference.embed as embedding

    def no_decoding(*args, **kwargs):
        raise AssertionError("evaluation decoded images although the gallery is cached")

    with monkeypatch.context() as m:  # every evaluation of the cached run must read the cache
        m.setattr(embedding, "preprocess_images", no_decoding)
        cached = train(output_dir=str(tmp_path / "cached"), **common)
    plain = train(output_dir=str(tmp_path / "plain"), cache_images="false", **common)
    files = list((tmp_path / "pc").glob("pixels-*.arrow"))
    assert len(files) == 2  # the training images and the validation gallery
    a, b = (
        load_file(cached.output_dir / "adapter_model.safetensors"),
        load_file(plain.output_dir / "adapter_model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cached.eval_metrics["eval_t2i_MR"] == plain.eval_metrics["eval_t2i_MR"]
    assert cached.eval_metrics["eval_gallery_size"] == plain.eval_metrics["eval_gallery_size"] > 8


def test_unwritable_cache_folder_runs_uncached_or_fails_early_when_named(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, caplog
):
    """A cache only saves time: an unwritable default location (here HF_DATASETS_CACHE under a plain
    file, which fails even for root) trains uncached with a warning; an unwritable --cache_dir the
    user named, or a cache they required, stops before training with the folder in the message."""
    import datasets

    from cnclip_lora.training.run import train

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(blocker / "hf"))
    common = dict(
        model_name_or_path=str(tiny_model_dir),
        data_dir=str(demo_dir),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_train_epochs=2,
        val_size=0,
        save_strategy="no",
        check_images=False,
    )
    with caplog.at_level("WARNING"):
        result = train(output_dir=str(tmp_path / "out"), **common)
    assert json.loads((result.output_dir / "cnclip_lora.json").read_text())["data"]["pixel_cache"] is False
    assert any(
        "cannot write the pixels cache" in r.getMessage() and "HF_DATASETS_CACHE" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(ConfigError, match=r"cannot write the pixels cache in .*not-a-folder/pc.*writable --cache_dir"):
        train(output_dir=str(tmp_path / "out2"), cache_dir=str(blocker / "pc"), **common)
    with pytest.raises(ConfigError, match="cannot write the pixels cache"):
        train(output_dir=str(tmp_path / "out3"), cache_images="true", **common)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
