"""The one preprocessing path shared by training and retrieval.

Training and retrieval both go through :func:`load_image`, :func:`preprocess_images` and
:func:`cnclip_lora.text.tokenize_titles`, and the choices that matter (flip rule, title length)
are recorded next to the adapter as a :class:`cnclip_lora.record.Preprocessing`, so the gallery
is embedded exactly as the training images were seen. The seed solution flipped every training image but not the gallery;
this module exists so that cannot happen again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from cnclip_lora.data import open_image
from cnclip_lora.options import DEFAULT_MAX_LENGTH, Flip, TitleNormalization, parse_choice
from cnclip_lora.text import TitleTokenMemo, tokenize_titles

__all__ = [
    "ImageTextCollator",
    "load_image",
    "decode_resized",
    "pixel_values_from_uint8",
    "preprocess_images",
    "supports_uint8_path",
    "target_image_size",
]


def target_image_size(image_processor: Any) -> int | None:
    """The shorter side the processor resizes to, used to decode JPEGs at reduced size (draft)."""
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, dict):
        sides = [v for k, v in size.items() if k in ("height", "width", "shortest_edge") and v]
    else:
        sides = [getattr(size, k, None) for k in ("height", "width", "shortest_edge")]
        sides = [s for s in sides if s]
    return min(sides) if sides else None


def load_image(path: str | os.PathLike, *, flip: bool, draft_size: int | None = None) -> Image.Image:
    """Open one image as RGB (EXIF-upright, alpha on white), mirrored left-right when ``flip``."""
    image = open_image(path, draft_size=draft_size)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def preprocess_images(
    paths: Sequence[str | os.PathLike],
    image_processor: Any,
    *,
    flips: Sequence[bool] | bool = False,
    draft: bool = False,
) -> torch.Tensor:
    """Open, optionally flip, and run the checkpoint's own image processor: ``[B, 3, H, W]``."""
    if isinstance(flips, bool):
        flips = [flips] * len(paths)
    if _squash_plan(image_processor) is not None and paths:
        return pixel_values_from_uint8(decode_resized(paths, image_processor, draft=draft), flips, image_processor)
    draft_size = target_image_size(image_processor) if draft else None
    images = [load_image(p, flip=f, draft_size=draft_size) for p, f in zip(paths, flips)]
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def decode_resized(paths: Sequence[str | os.PathLike], image_processor: Any, *, draft: bool = False) -> np.ndarray:
    """Open each image (upright RGB, unflipped) and squash-resize it as the processor would:
    ``uint8 [B, H, W, 3]``. This is the expensive half of :func:`preprocess_images`, and what
    :mod:`cnclip_lora.training.pixel_cache` stores so that later epochs skip it.

    Raises:
        ValueError: the processor does not squash-resize (see :func:`supports_uint8_path`).
    """
    plan = _squash_plan(image_processor)
    if plan is None:
        raise ValueError("decode_resized needs a squash-resize image processor (no crop, no padding)")
    draft_size = target_image_size(image_processor) if draft else None
    size = (plan.width, plan.height)
    out = np.empty((len(paths), plan.height, plan.width, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(open_image(path, draft_size=draft_size).resize(size, resample=plan.resample))
    return out


def pixel_values_from_uint8(arr: np.ndarray, flips: Sequence[bool], image_processor: Any) -> torch.Tensor:
    """Mirror the rows whose flag is set, then rescale and normalise: ``float32 [B, 3, H, W]``.

    Mirroring the resized image equals resizing the mirrored one (Pillow's resampling is
    symmetric; tested), and is cheaper. Rescale and normalise of a byte depend only on its value
    and channel, so they are a 256-entry table per channel (float32 multiply then subtract, within
    1e-6 of the processor's float64-then-float32 arithmetic): one lookup per pixel does the
    mirroring, HWC -> CHW reordering, conversion and normalisation together, one image at a time
    so that each image stays in cache (4x faster than the same steps as whole-batch tensor ops).
    """
    plan = _squash_plan(image_processor)
    if plan is None:
        raise ValueError("pixel_values_from_uint8 needs a squash-resize image processor (no crop, no padding)")
    n, height, width, _ = arr.shape
    if len(flips) != n:
        raise ValueError(f"{len(flips)} flip flags for {n} images")
    scale = torch.full((3, 1), plan.rescale if plan.rescale is not None else 1.0)
    shift = torch.zeros((3, 1))
    if plan.mean is not None:
        scale, shift = scale / plan.std.view(3, 1), plan.mean.view(3, 1) / plan.std.view(3, 1)
    table = (torch.arange(256, dtype=torch.float32) * scale - shift).numpy()  # [3, 256]
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for i, flip in enumerate(flips):
        chw = np.ascontiguousarray((arr[i, :, ::-1] if flip else arr[i]).transpose(2, 0, 1))
        for c in range(3):
            np.take(table[c], chw[c], out=out[i, c], mode="clip")
    return torch.from_numpy(out)


def supports_uint8_path(image_processor: Any) -> bool:
    """Whether images can be stored resized as uint8 and finished per batch (the released
    checkpoints' squash resize; a crop or shortest-edge processor cannot)."""
    return _squash_plan(image_processor) is not None


@dataclass(frozen=True)
class _SquashPlan:
    width: int
    height: int
    resample: int
    rescale: float | None
    mean: torch.Tensor | None  # [3, 1, 1]
    std: torch.Tensor | None


def _size_hw(size: Any) -> tuple[int | None, int | None, Any]:
    get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
    return get("height"), get("width"), get("shortest_edge") or get("longest_edge") or get("max_height")


def _squash_plan(image_processor: Any) -> _SquashPlan | None:
    """The processor's steps when they are exactly what the released checkpoints use (PIL
    backend, squash resize to height x width, no crop or pad, rescale, normalise), else ``None``.

    Why: the PIL backend converts every image to numpy, back to PIL to resize, then rescales in
    float64 and normalises one image at a time; doing the same steps once per batch halves the
    collator's CPU time, which on small machines competes with the model for cores, and lets the
    resized uint8 images be cached between epochs. Anything else (crop, shortest-edge resize,
    padding, other backends) goes through the processor itself.
    """
    p = image_processor
    if getattr(p, "backend", None) != "pil" or not getattr(p, "do_resize", False):
        return None
    if getattr(p, "do_center_crop", False) or getattr(p, "do_pad", False):
        return None
    height, width, other = _size_hw(getattr(p, "size", None) or {})
    if not height or not width or other:
        return None

    def channels(v: Any) -> torch.Tensor | None:
        if v is None:
            return None
        t = torch.as_tensor(v if isinstance(v, (list, tuple)) else [v] * 3, dtype=torch.float32)
        return t.view(-1, 1, 1) if t.numel() == 3 else None

    mean = channels(p.image_mean) if getattr(p, "do_normalize", False) else None
    std = channels(p.image_std) if getattr(p, "do_normalize", False) else None
    if getattr(p, "do_normalize", False) and (mean is None or std is None):
        return None
    resample = p.resample if p.resample is not None else Image.Resampling.BILINEAR
    rescale = float(p.rescale_factor) if getattr(p, "do_rescale", False) else None
    return _SquashPlan(int(width), int(height), int(resample), rescale, mean, std)


@dataclass
class ImageTextCollator:
    """Turn ``{"title", "path"}`` rows into a model batch, inside DataLoader workers.

    Reads ``title`` (str) and ``path`` (file name relative to ``image_dir``) from each row and
    returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, T]`` (``T``: the batch's
    longest title rounded up to a multiple of 8, or ``max_length`` with ``pad_to_max_length``) and
    ``pixel_values`` ``[B, 3, H, W]``. Random flips are drawn here (never in a cached
    ``datasets.map``) from torch's generator, which the Trainer seeds per worker. With a
    ``pixel_cache`` only the deterministic part (decode + resize) comes from the cache; flips and
    normalisation still happen here, so a cached batch equals an uncached one.

    Example::

        collate = ImageTextCollator(processor, "xfdata/image", flip="always")
        batch = collate([{"title": "红色条纹T恤", "path": "0a1b....jpg"}])
    """

    processor: Any
    image_dir: str | os.PathLike
    max_length: int = DEFAULT_MAX_LENGTH
    #: A :class:`~cnclip_lora.options.Flip` value.
    flip: str = Flip.RANDOM
    draft: bool = False
    #: How titles reach the tokenizer (:class:`~cnclip_lora.options.TitleNormalization`).
    title_normalization: str = TitleNormalization.OFFICIAL
    #: A :class:`cnclip_lora.training.pixel_cache.PixelCache` of the rows' images: they are then taken
    #: resized from it instead of being opened, and only flipped and normalised here.
    pixel_cache: Any = None
    #: Titles remembered after their first tokenisation (:class:`TitleTokenMemo`); 0 turns it off.
    max_memo_titles: int = 1 << 18
    #: Pad every batch to ``max_length`` (static shapes for compiled graphs) instead of to its
    #: longest title (see :func:`tokenize_titles`).
    pad_to_max_length: bool = False

    def __post_init__(self) -> None:
        self.flip = parse_choice(Flip, self.flip, "flip")
        self._token_memo = TitleTokenMemo(self.max_memo_titles) if self.max_memo_titles > 0 else None

    def _tokens(self, titles: list[str]) -> dict[str, torch.Tensor]:
        if self._token_memo is None:
            return tokenize_titles(titles, self.processor.tokenizer, self.max_length, self.title_normalization,
                                   pad_to_max_length=self.pad_to_max_length)
        return self._token_memo(titles, self.processor.tokenizer, self.max_length, self.title_normalization,
                                self.pad_to_max_length)

    def _flips(self, n: int) -> list[bool]:
        if self.flip == Flip.ALWAYS:
            return [True] * n
        if self.flip == Flip.RANDOM:
            return (torch.rand(n) < 0.5).tolist()
        return [False] * n

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._tokens([row["title"] for row in rows])
        flips = self._flips(len(rows))
        image_processor = self.processor.image_processor
        if self.pixel_cache is not None:
            pixels = self.pixel_cache.get([row["path"] for row in rows])
            batch["pixel_values"] = pixel_values_from_uint8(pixels, flips, image_processor)
        else:
            paths = [Path(self.image_dir) / row["path"] for row in rows]
            batch["pixel_values"] = preprocess_images(paths, image_processor, flips=flips, draft=self.draft)
        return batch
