"""Tests for cnclip_lora.data.split: the grouped, seeded, order-free validation split."""

from __future__ import annotations

import pytest

from cnclip_lora.data.split import held_out_images, parse_val_size
from cnclip_lora.errors import ConfigError


def test_held_out_images_depend_on_the_set_and_seed_only():
    paths = [f"img_{i:03d}.jpg" for i in range(40)] * 3  # every image captioned three times
    held = held_out_images(paths, 0.25, seed=7)
    assert len(held) == 10 and held == sorted(held) and set(held) <= set(paths)
    assert held_out_images(reversed(paths), 0.25, seed=7) == held  # row order does not matter
    assert held_out_images(paths, 0.25, seed=7) == held  # the same seed, the same split
    assert len({tuple(held_out_images(paths, 0.25, seed=s)) for s in range(5)}) > 1


def test_held_out_counts_and_limits():
    paths = [f"{i}.jpg" for i in range(5)]
    assert held_out_images(paths, 0, seed=0) == []
    assert len(held_out_images(paths, 2, seed=0)) == 2
    assert len(held_out_images(paths, 0.01, seed=0)) == 1  # a fraction never rounds to nothing
    assert len(held_out_images(paths, 0.99, seed=0)) == 4  # nor to everything
    assert held_out_images([], 0.5, seed=0) == []
    with pytest.raises(ConfigError, match="holds out 5 images but train.csv has only 5"):
        held_out_images(paths, 5, seed=0)
    with pytest.raises(ConfigError, match="needs at least 2 usable training images"):
        held_out_images(["a.jpg"], 0.5, seed=0)


@pytest.mark.parametrize("value, expected", [(0.1, 0.1), (3, 3), (3.0, 3), (0, 0), (0.0, 0)])
def test_parse_val_size_fraction_or_count(value, expected):
    parsed = parse_val_size(value)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize("value", [-1, 1.5, float("inf"), float("nan"), True, "0.1", None])
def test_parse_val_size_refuses_the_rest(value):
    with pytest.raises(ConfigError, match=r"--val_size .* is invalid"):
        parse_val_size(value)
