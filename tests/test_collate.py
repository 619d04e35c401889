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


def _mirrored(batch) -> list[bool]:
    return (batch["pixel_values"][:, 0, :, 0].mean(dim=-1) < 0).tolist()  # red edge on the right


def test_seeded_random_flips_depend_only_on_seed_epoch_and_row(processor, asym_image, tmp_path):
    """A row's flip is the same whatever batch it is in, in whatever order, after any torch RNG use;
    another epoch or another seed draws other flips."""
    rows = [{"title": "红色", "path": asym_image.name, "row": r} for r in range(32)]
    collate = ImageTextCollator(processor, tmp_path, flip="random", flip_seed=7)
    collate.set_epoch(3)
    whole = _mirrored(collate(rows))
    torch.manual_seed(123)
    torch.rand(99)
    reordered = _mirrored(collate(rows[::-1]))[::-1]
    halves = _mirrored(collate(rows[16:])) + _mirrored(collate(rows[:16]))
    assert whole == reordered == halves[16:] + halves[:16]
    assert 4 < sum(whole) < 28  # a fair coin, not a constant
    collate.set_epoch(4)
    assert _mirrored(collate(rows)) != whole
    other = ImageTextCollator(processor, tmp_path, flip="random", flip_seed=8)
    other.set_epoch(3)
    assert _mirrored(other(rows)) != whole


@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_workers_see_the_epoch_the_trainer_sets(processor, asym_image, tmp_path, persistent):
    """Workers (persistent ones too) collate with the epoch set in the main process before iterating."""
    rows = [{"title": "红色", "path": asym_image.name, "row": r} for r in range(16)]
    collate = ImageTextCollator(processor, tmp_path, flip="random", flip_seed=0)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=16, collate_fn=collate, num_workers=1, persistent_workers=persistent
    )
    expected = {}
    for epoch in (0, 1, 2):
        collate.set_epoch(epoch)
        expected[epoch] = _mirrored(collate(rows))
    for epoch in (0, 1, 2):
        collate.set_epoch(epoch)
        (batch,) = list(loader)
        assert _mirrored(batch) == expected[epoch], epoch
    assert expected[0] != expected[1] or expected[1] != expected[2]


def test_collator_names_a_missing_image(processor, tmp_path):
    from cnclip_lora.errors import DataError

    with pytest.raises(DataError, match="nope.jpg"):
        ImageTextCollator(processor, tmp_path, flip="none")([{"title": "t", "path": "nope.jpg"}])
