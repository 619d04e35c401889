"""The shared preprocessing path: collator contract, flips, the image pipeline."""

from __future__ import annotations

import pytest
import torch

from cnclip_lora.inputs.collate import (
    ImageTextCollator,
)


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


def test_random_flip_follows_torch_seed(processor, asym_image, tmp_path):
    rows = [{"title": "红色", "path": asym_image.name}] * 16
    collate = ImageTextCollator(processor, tmp_path, flip="random")
    torch.manual_seed(0)
    a = collate(rows)["pixel_values"]
    torch.manual_seed(0)
    b = collate(rows)["pixel_values"]
    assert torch.equal(a, b)
    left_red = a[:, 0, :, 0].mean(dim=-1) > 0  # red channel high at the left edge = not flipped
    assert 0 < int(left_red.sum()) < 16  # some flipped, some not


def test_collator_names_a_missing_image(processor, tmp_path):
    from cnclip_lora.errors import DataError

    with pytest.raises(DataError, match="nope.jpg"):
        ImageTextCollator(processor, tmp_path, flip="none")([{"title": "t", "path": "nope.jpg"}])
