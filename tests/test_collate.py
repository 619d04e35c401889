"""The shared preprocessing path: collator contract, flips, the image pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from cnclip_lora.collate import (
    _squash_plan,
    load_image,
    ImageTextCollator,
    preprocess_images,
)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture
def asym_image(tmp_path):
    """An image whose left half differs from its right half, so a flip is visible."""
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[:, :20] = (250, 10, 10)
    arr[:, 20:] = (10, 10, 250)
    path = tmp_path / "asym.png"
    Image.fromarray(arr).save(path)
    return path


def test_collator_returns_the_documented_batch(processor, demo_dir):
    import pandas as pd

    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(3).to_dict("records")
    batch = ImageTextCollator(processor, demo_dir / "image", max_length=52, flip="none")(rows)
    size = processor.image_processor.size["height"]
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values"}
    longest = int(batch["attention_mask"].sum(dim=1).max())
    assert batch["input_ids"].shape == (3, min(52, -(-longest // 8) * 8))  # padded to the longest, multiple of 8
    assert batch["pixel_values"].shape == (3, 3, size, size)
    assert batch["pixel_values"].dtype == torch.float32


def test_flip_always_mirrors_pixels_and_none_does_not(processor, asym_image):
    plain = preprocess_images([asym_image], processor.image_processor, flips=False)
    flipped = preprocess_images([asym_image], processor.image_processor, flips=True)
    assert torch.allclose(flipped, torch.flip(plain, dims=[-1]), atol=1e-5)
    assert not torch.allclose(flipped, plain, atol=1e-2)


def test_random_flip_follows_torch_seed(processor, asym_image, tmp_path):
    rows = [{"title": "红色", "path": asym_image.name}] * 16
    collate = ImageTextCollator(processor, tmp_path, flip="random")
    torch.manual_seed(0)
    a = collate(rows)["pixel_values"]
    torch.manual_seed(0)
    b = collate(rows)["pixel_values"]
    assert torch.equal(a, b)
    left_red = a[:, 0, :, 0].mean(dim=-1) > 0  # red channel high at the left edge = not flipped
    assert 0 < int(left_red.sum()) < 16         # some flipped, some not


def test_collator_names_a_missing_image(processor, tmp_path):
    from cnclip_lora.errors import DataError

    with pytest.raises(DataError, match="nope.jpg"):
        ImageTextCollator(processor, tmp_path, flip="none")([{"title": "t", "path": "nope.jpg"}])
# --- to append to tests/test_collate.py (helper F: batched squash path in preprocess_images) ---


@pytest.mark.parametrize("draft", [True, False])
def test_batched_path_equals_the_checkpoint_processor(processor, tmp_path, draft):
    """The batched resize/rescale/normalise must give the processor's own pixels (float32 within 1e-5),
    for odd sizes, PNG and JPEG, flipped or not."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(224, 224), (300, 180), (50, 90), (1000, 20)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for ext in ("png", "jpg"):
            Image.fromarray(arr).save(tmp_path / f"{i}.{ext}")
            paths.append(tmp_path / f"{i}.{ext}")
    image_processor = processor.image_processor
    assert _squash_plan(image_processor) is not None  # the tiny checkpoint is squash-resize, like the Hub's
    fast = preprocess_images(paths, image_processor, flips=True, draft=draft)
    size = 64 if draft else None
    ref = image_processor(images=[load_image(p, flip=True, draft_size=size) for p in paths], return_tensors="pt")
    assert fast.dtype == ref["pixel_values"].dtype
    torch.testing.assert_close(fast, ref["pixel_values"], rtol=0, atol=1e-5)


def test_crop_processors_use_the_processor_itself():
    """Class defaults (shortest-edge resize + centre crop) are not the squash case: no batched path."""
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    assert _squash_plan(ChineseCLIPImageProcessorPil()) is None
