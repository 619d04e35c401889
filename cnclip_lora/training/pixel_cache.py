"""Decode each training image once: resized uint8 pixels in a ``datasets`` Arrow cache.

Why: the seed decoded and resized every JPEG again in every epoch (30 epochs over 5,000 images),
work that keeps a GPU waiting and, on a small CPU machine, competes with the model for cores.
Decoding and resizing do not depend on the epoch; only the flip (random mode) and the
normalisation are redone per batch, by the same :func:`cnclip_lora.inputs.images.pixel_values_from_uint8`
that finishes uncached images, so cached and uncached batches are identical (tested).

The cache is a ``datasets.map`` result in ``cache_dir``, named by a fingerprint of the image
files (path, inode, size, mtime, ctime), the resize (size, filter, draft decoding) and the format version:
any change re-decodes, a rerun with other hyper-parameters reuses it. The Arrow file is
memory-mapped, so DataLoader workers and the processes of one node share one copy through the
page cache. Size: ``height * width * 3`` bytes per distinct image (150 KB at 224 px).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from cnclip_lora.errors import ConfigError
from cnclip_lora.inputs.images import decode_resized, squash_plan, supports_uint8_path
from cnclip_lora.options import CacheImages, parse_choice
from cnclip_lora.utils.caches import default_cache_dir
from cnclip_lora.utils.files import hash_file_stats

__all__ = ["PixelCache", "build_pixel_cache", "pixel_cache_bytes", "should_cache"]


FORMAT_VERSION = 1
#: ``auto`` caches when the pixels take at most this much disk (override: --image_cache_max_gb).
DEFAULT_MAX_GB = 20.0


class PixelCache:
    """Resized uint8 images keyed by the path strings the cache was built from (relative to its
    ``image_dir``); ``get`` returns ``[B, H, W, 3]``."""

    def __init__(
        self,
        dataset: datasets.Dataset,
        paths: Sequence[str],
        shape: tuple[int, int, int],
        cache_file: str | None = None,
    ):
        # Arrow, not the numpy formatter: that one widens the uint8 values to int64 (8x the copy).
        self.dataset = dataset.with_format("arrow", columns=["pixels"])
        self.index = {p: i for i, p in enumerate(paths)}
        self.shape = shape
        self.cache_file = cache_file

    def __len__(self) -> int:
        return len(self.index)

    def get(self, paths: Sequence[str]) -> np.ndarray:
        column = self.dataset[[self.index[p] for p in paths]].column("pixels").combine_chunks()
        # writable: a copy (torch refuses to wrap read-only memory silently); small next to normalising.
        return column.flatten().to_numpy(zero_copy_only=False, writable=True).reshape(len(paths), *self.shape)


def pixel_cache_bytes(n_images: int, image_processor: Any) -> int:
    """Disk the cache of ``n_images`` distinct images takes (0 when the processor cannot use one)."""
    plan = squash_plan(image_processor)
    return 0 if plan is None else n_images * plan.height * plan.width * 3


def should_cache(
    mode: str, *, n_images: int, epochs: float, image_processor: Any, max_gb: float = DEFAULT_MAX_GB
) -> tuple[bool, str]:
    """Decide whether to cache, and say why (logged, so the choice is never silent).

    ``auto`` caches when training sees the images more than once and the pixels fit in ``max_gb``;
    ``true`` always (an error when the processor crops, which the uint8 path cannot replay);
    ``false`` never.
    """
    mode = parse_choice(CacheImages, mode, "--cache_images")
    if mode == CacheImages.FALSE:
        return False, "--cache_images false"
    if not supports_uint8_path(image_processor):
        if mode == CacheImages.TRUE:
            raise ConfigError(
                "--cache_images true needs the checkpoint's squash resize (no centre crop, no padding, PIL "
                "backend); this image processor crops or pads, so images are decoded per batch. Use auto or false."
            )
        return False, "the image processor crops or pads (no uint8 path)"
    size_gb = pixel_cache_bytes(n_images, image_processor) / 1e9
    if mode == CacheImages.TRUE:
        return True, f"--cache_images true ({size_gb:.2f} GB)"
    if epochs <= 1:
        return False, f"auto: training reads each image at most once ({epochs:.2f} epochs)"
    if size_gb > max_gb:
        return False, f"auto: {size_gb:.1f} GB of pixels exceeds --image_cache_max_gb {max_gb:g}"
    return True, f"auto: {epochs:.1f} epochs over {n_images} images ({size_gb:.2f} GB)"


def cache_fingerprint(image_dir: str | os.PathLike, paths: Sequence[str], image_processor: Any, draft: bool) -> str:
    """Any change of an image file (its stat identity), of the resize or of the format gives a new key."""
    plan = squash_plan(image_processor)
    assert plan is not None
    payload = {"v": FORMAT_VERSION, "size": [plan.height, plan.width], "resample": plan.resample, "draft": draft}
    h = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    hash_file_stats(h, [str(Path(image_dir) / p) for p in paths])
    return h.hexdigest()[:32]


def build_pixel_cache(
    image_dir: str | os.PathLike,
    paths: Sequence[str],
    image_processor: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    draft: bool = False,
    num_proc: int | None = None,
    batch_size: int = 64,
) -> PixelCache:
    """Decode and resize every distinct image in ``paths`` once (or load the existing cache).

    ``num_proc`` (decoding processes) defaults to the cores, at most 8; sets under 8 batches
    decode in this process. ``cache_dir`` defaults to ``datasets``' own cache folder (``HF_DATASETS_CACHE``) under
    ``cnclip_lora/pixels``. Under several processes, call it inside
    ``TrainingArguments.main_process_first()``: the main process writes the file, the others find
    it by its fingerprint.
    """
    if cache_dir is None:
        cache_dir = default_cache_dir("pixels")
    unique = list(dict.fromkeys(paths))
    fingerprint = cache_fingerprint(image_dir, unique, image_processor, draft)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cache_file = str(Path(cache_dir) / f"pixels-{fingerprint}.arrow")
    plan = squash_plan(image_processor)
    shape = (plan.height, plan.width, 3)
    # A flat fixed-length list: Arrow stores it as one contiguous buffer (Array3D would add an
    # offset per pixel row and column, more than the pixels themselves), read back as one array.
    features = datasets.Features(
        {
            "path": datasets.Value("string"),
            "pixels": datasets.List(datasets.Value("uint8"), length=int(np.prod(shape))),
        }
    )
    root = Path(image_dir)

    def decode(batch: dict[str, list]) -> dict[str, Any]:
        pixels = decode_resized([root / p for p in batch["path"]], image_processor, draft=draft)
        return {"pixels": pixels.reshape(len(pixels), -1)}

    # Small sets are not worth the worker start-up; datasets shards the file per process otherwise.
    num_proc = num_proc or min(8, os.cpu_count() or 1)
    procs = num_proc if num_proc > 1 and len(unique) >= 8 * batch_size else None

    def build(reuse: bool) -> datasets.Dataset:
        dataset = datasets.Dataset.from_dict({"path": unique}).map(
            decode,
            batched=True,
            batch_size=batch_size,
            num_proc=procs,
            features=features,
            cache_file_name=cache_file,
            new_fingerprint=fingerprint,
            load_from_cache_file=reuse,
            desc="Decoding training images once (pixel cache)",
        )
        if len(dataset) != len(unique) or dataset["path"] != unique:  # another set's file under this name
            raise ValueError(f"{len(dataset)} rows for {len(unique)} images")
        return dataset

    from cnclip_lora.utils.caches import read_or_rebuild

    files = lambda: sorted(Path(cache_dir).glob(f"pixels-{fingerprint}*.arrow"))  # noqa: E731 - shards too
    dataset = read_or_rebuild(build, files, "pixel cache", "decoding the images")
    return PixelCache(dataset, unique, shape, cache_file)
