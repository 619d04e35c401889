"""The train/validation split: grouped by image, decided by the seed and the set of images only."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

from cnclip_lora.errors import ConfigError

__all__ = ["held_out_images", "parse_val_size"]


def parse_val_size(val_size: float | int) -> float | int:
    """Return ``val_size`` as a fraction (float < 1) or a count (int); ConfigError otherwise.

    An integral float >= 1 counts as a count, because option parsers often type the field
    as float.
    """
    value: float | int | None = None
    if isinstance(val_size, bool):
        pass
    elif isinstance(val_size, numbers.Integral):
        value = int(val_size)
    elif isinstance(val_size, numbers.Real) and math.isfinite(val_size):
        value = float(val_size)
        if value >= 1 or value == 0:
            value = int(value) if value.is_integer() else None
    if value is None or value < 0:
        raise ConfigError(
            f"--val_size {val_size!r} is invalid: give a fraction of the training images in (0, 1), "
            "a whole number of images to hold out, or 0 for no validation split"
        )
    return value


def _n_held_out(val_size: float | int, n_images: int) -> int:
    """How many images to hold out; ConfigError when the split would leave no training image."""
    if val_size == 0:
        return 0
    if isinstance(val_size, float) and val_size < 1:
        count = min(max(1, round(val_size * n_images)), n_images - 1)
        if n_images < 2:
            raise ConfigError(
                f"--val_size {val_size} needs at least 2 usable training images, found {n_images}; "
                "use --val_size 0 for no validation split"
            )
        return count
    count = int(val_size)
    if count >= n_images:
        raise ConfigError(
            f"--val_size {count} holds out {count} images but train.csv has only {n_images} usable "
            "images; use a smaller count, a fraction such as 0.1, or 0 for no validation split"
        )
    return count


def held_out_images(paths: Iterable[str], val_size: float | int, seed: int) -> list[str]:
    """The training images held out for validation, sorted.

    Grouped by image (every caption of an image lands on the same side), so a held-out image is
    never trained on; the images are sorted first, so the split depends on the set of images and
    the seed, not on row order. ``val_size`` as returned by :func:`parse_val_size`.

    Raises:
        ConfigError: the split would leave no training image.
    """
    images = sorted(set(paths))
    n_held = _n_held_out(val_size, len(images)) if val_size and images else 0
    order = np.random.default_rng(seed).permutation(len(images))
    return sorted(images[i] for i in order[:n_held])
