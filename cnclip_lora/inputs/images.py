"""The one image path shared by the data check, training and retrieval.

Every image is opened by :func:`open_image` (pixel limit, EXIF orientation, RGB rules), so the
check, the collator and the gallery can never disagree about a file. The pixels then reach the
model either through the checkpoint's own image processor or, for the squash resize the released
checkpoints use, through :func:`decode_resized` + :func:`pixel_values_from_uint8`, which give the
processor's pixels for less work and let the resized uint8 images be cached between epochs.

Decoding needs only Pillow and numpy: ``check-data`` imports this module without torch; the
functions that return tensors import torch when called.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from cnclip_lora.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "SquashPlan",
    "decode_errors",
    "decode_resized",
    "load_image",
    "max_image_pixels",
    "open_image",
    "pixel_values_from_uint8",
    "preprocess_images",
    "squash_plan",
    "supports_uint8_path",
    "target_image_size",
]


def _pillow_extensions() -> tuple[str, ...]:
    """Every file extension (lower case) of a format Pillow can open, so training, the image
    check and the gallery accept exactly the same files (GIF, TIFF, ... included)."""
    Image.init()
    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


#: File extensions (lower case) that make a regular file in ``image/`` a gallery candidate:
#: every format Pillow opens (an animated image contributes its first frame).
IMAGE_EXTENSIONS = _pillow_extensions()

#: Environment variable that sets the largest image (in pixels) accepted; ``none`` disables the check.
MAX_PIXELS_ENV = "CNCLIP_MAX_IMAGE_PIXELS"


class _ImageTooLarge(ValueError):
    """An image over the pixel limit (Pillow's decompression-bomb guard)."""


# Pillow raises these for unreadable images; DecompressionBombError is not an OSError.
# Pillow's format plugins also leak struct.error, IndexError, TypeError... on damaged files: all mean
# "this file cannot be decoded" and are reported as such, never as a traceback.
_IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    ArithmeticError,
)


# ------------------------------------------------------------------------- decoding


def open_image(path: str | os.PathLike, *, draft_size: int | None = None) -> Image.Image:
    """Open any image Pillow can read as a fully loaded RGB image, or raise ``DataError``.

    Training, validation and retrieval all go through this one function, so the EXIF
    orientation (applied with ``ImageOps.exif_transpose``) and the RGB conversion are the
    same everywhere. Transparent pixels are composited on white rather than black because
    product photos are shot on white: a cut-out on black would look like another product.
    16-bit images are scaled to 8 bits instead of clipped (Pillow's ``convert`` clips them
    to almost pure white).

    Args:
        path: The image file.
        draft_size: If set, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose
            sides are still at least ``draft_size`` (Pillow's draft mode): much cheaper when
            the processor shrinks the image anyway. Other formats ignore it.
    """
    limit = max_image_pixels()  # outside the try: a bad setting is a ConfigError, not an image error
    try:
        return _decode_image(Path(path), draft=(draft_size, draft_size) if draft_size else None, limit=limit)
    except _IMAGE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_image_error_text(exc)}; replace or remove the file") from exc


def max_image_pixels() -> int | None:
    """The largest image, in pixels, that is decoded; ``None`` means no limit.

    Pillow refuses images over ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million pixels)
    only with a warning, and raises only over twice that, because a tiny compressed file can
    expand to gigabytes (a "decompression bomb"). The package rejects everything over the
    limit with a :class:`DataError` naming the file. Product photos are far below it; a genuine
    larger image is accepted once the limit is raised with the environment variable
    ``CNCLIP_MAX_IMAGE_PIXELS`` (a whole number, or ``none`` to disable the check); a limit above
    Pillow's raises Pillow's own to match (``PIL.Image.MAX_IMAGE_PIXELS`` is process-wide).

    Raises:
        ConfigError: The environment variable is neither a whole number nor ``none``.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    if raw.lower() in ("none", "off", "0"):
        limit = None
    else:
        try:
            limit = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(
                f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels; "
                "give e.g. 200000000, or `none` to disable the decompression-bomb check"
            ) from None
        if limit < 0:
            raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive number of pixels (or `none`)")
    # Pillow's own guard must not fire below a limit the user raised (a lower one is ours to enforce).
    if limit is None or (Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _too_large_text(pixels: int | None, limit: int | None) -> str:
    size = f"{pixels:,} pixels" if pixels else "too many pixels"
    limit_text = f"the {limit:,}-pixel limit" if limit else "Pillow's limit"
    return (
        f"{size}, over {limit_text} that guards against decompression bombs; if the image is genuine, "
        f"downscale it or raise the limit with the environment variable {MAX_PIXELS_ENV} "
        f"(e.g. {MAX_PIXELS_ENV}={max(pixels or 0, (limit or 0) * 2) or 'none'}, or `none`)"
    )


def _decode_image(path: Path, *, draft: tuple[int, int] | None, limit: int | None) -> Image.Image:
    with Image.open(path) as im:
        # Checked on the header, before a single pixel is decoded.
        if limit is not None and im.width * im.height > limit:
            raise _ImageTooLarge(_too_large_text(im.width * im.height, limit))
        if draft and im.format == "JPEG":
            im.draft(None, draft)
        im.load()
        return _to_rgb(_upright(im))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF/XMP block leaves the image as stored.

    The pixels decoded fine, only the metadata saying how to turn them is broken, so the image
    is used un-rotated (what every viewer that ignores the tag shows). Any error of the
    orientation step counts: Pillow raises SyntaxError, struct.error, TypeError, ... depending
    on where the block is damaged. Training, checks and retrieval share this function.
    """
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - the whole class of metadata damage, see docstring
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range -> 8-bit
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def _image_error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, _ImageTooLarge):
        return text
    if isinstance(exc, Image.DecompressionBombError):
        # Pillow's own guard (twice its limit) fired first, e.g. after PIL.Image.MAX_IMAGE_PIXELS was lowered.
        found = [int(n) for n in re.findall(r"\d+", text)]
        return _too_large_text(found[0] if found else None, Image.MAX_IMAGE_PIXELS)
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if "cannot identify image file" in text:
        return "not an image Pillow can read"
    return text


def _decode_error(path: Path, limit: int | None = None) -> str | None:
    """Why ``path`` cannot be decoded, or ``None`` when it can."""
    try:
        # (1, 1) = 1/8 scale: every byte is still decoded, so truncation still fails, for less.
        _decode_image(path, draft=(1, 1), limit=limit)
    except _IMAGE_ERRORS as exc:
        return _image_error_text(exc)
    return None


def decode_errors(image_dir: Path, names: Sequence[str], workers: int | None) -> dict[str, str | None]:
    """Decode every image; ``{name: why it cannot be read, or None}``.

    Threads, because Pillow releases the GIL while decoding. ``workers`` defaults to twice the
    CPU count, at most 16.
    """
    if not names:
        return {}
    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    paths = [image_dir / n for n in names]
    check = functools.partial(_decode_error, limit=max_image_pixels())
    from tqdm.auto import tqdm

    # A bar on a terminal only (disable=None): logs and captured output stay quiet.
    bar = functools.partial(tqdm, total=len(paths), desc="checking images", unit="img", disable=None, leave=False)
    if workers <= 1:
        return dict(zip(names, bar(map(check, paths))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(zip(names, bar(pool.map(check, paths, chunksize=64))))


def as_model_image(item: str | os.PathLike | Image.Image, *, draft_size: int | None = None) -> Image.Image:
    """An image file (:func:`open_image`) or an in-memory PIL image as upright RGB, by the same rules
    (EXIF orientation, alpha on white, 16-bit scaled), so both reach the model alike."""
    if isinstance(item, Image.Image):
        item.load()
        return _to_rgb(_upright(item))
    return open_image(item, draft_size=draft_size)


def load_image(path: str | os.PathLike | Image.Image, *, flip: bool, draft_size: int | None = None) -> Image.Image:
    """Open one image as RGB (EXIF-upright, alpha on white), mirrored left-right when ``flip``."""
    image = as_model_image(path, draft_size=draft_size)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


# ------------------------------------------------------------------- model pixels


def target_image_size(image_processor: Any) -> int | None:
    """The shorter side the processor resizes to, used to decode JPEGs at reduced size (draft)."""
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, dict):
        sides = [v for k, v in size.items() if k in ("height", "width", "shortest_edge") and v]
    else:
        sides = [getattr(size, k, None) for k in ("height", "width", "shortest_edge")]
        sides = [s for s in sides if s]
    return min(sides) if sides else None


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
    if squash_plan(image_processor) is not None and paths:
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
    plan = squash_plan(image_processor)
    if plan is None:
        raise ValueError("decode_resized needs a squash-resize image processor (no crop, no padding)")
    draft_size = target_image_size(image_processor) if draft else None
    size = (plan.width, plan.height)
    out = np.empty((len(paths), plan.height, plan.width, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(as_model_image(path, draft_size=draft_size).resize(size, resample=plan.resample))
    return out


def pixel_values_from_uint8(arr: np.ndarray, flips: Sequence[bool], image_processor: Any) -> torch.Tensor:
    """Mirror the rows whose flag is set, then rescale and normalise: ``float32 [B, 3, H, W]``.

    Mirroring the resized image equals resizing the mirrored one (Pillow's resampling is
    symmetric; tested), and is cheaper. Rescale and normalise of a byte depend only on its value
    and channel, so they are a 256-entry table per channel (float32 multiply then subtract, within
    1e-6 of the processor's float64-then-float32 arithmetic): one lookup per pixel does the
    mirroring, HWC -> CHW reordering, conversion and normalisation together, one image at a time
    so that each image stays in cache (faster than the same steps as whole-batch tensor ops).
    """
    import torch

    plan = squash_plan(image_processor)
    if plan is None:
        raise ValueError("pixel_values_from_uint8 needs a squash-resize image processor (no crop, no padding)")
    n, height, width, _ = arr.shape
    if len(flips) != n:
        raise ValueError(f"{len(flips)} flip flags for {n} images")
    # float32 throughout: the table the processor's arithmetic rounds to (IEEE float32 multiply/divide).
    scale = np.full((3, 1), plan.rescale if plan.rescale is not None else 1.0, dtype=np.float32)
    shift = np.zeros((3, 1), dtype=np.float32)
    if plan.mean is not None:
        scale, shift = scale / plan.std.reshape(3, 1), plan.mean.reshape(3, 1) / plan.std.reshape(3, 1)
    table = np.arange(256, dtype=np.float32) * scale - shift  # [3, 256]
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for i, flip in enumerate(flips):
        chw = np.ascontiguousarray((arr[i, :, ::-1] if flip else arr[i]).transpose(2, 0, 1))
        for c in range(3):
            np.take(table[c], chw[c], out=out[i, c], mode="clip")
    return torch.from_numpy(out)


def supports_uint8_path(image_processor: Any) -> bool:
    """Whether images can be stored resized as uint8 and finished per batch (the released
    checkpoints' squash resize; a crop or shortest-edge processor cannot)."""
    return squash_plan(image_processor) is not None


@dataclass(frozen=True)
class SquashPlan:
    """The steps of a squash-resize processor: resize to ``height x width``, rescale, normalise."""

    width: int
    height: int
    resample: int
    rescale: float | None
    mean: np.ndarray | None  # float32 [3]
    std: np.ndarray | None


def _size_hw(size: Any) -> tuple[int | None, int | None, Any]:
    get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
    return get("height"), get("width"), get("shortest_edge") or get("longest_edge") or get("max_height")


def _channels(value: Any) -> np.ndarray | None:
    """A per-channel float32 value (mean or std) for 3 channels, or ``None`` when it is not one."""
    if value is None:
        return None
    arr = np.asarray(value if isinstance(value, (list, tuple)) else [value] * 3, dtype=np.float32).reshape(-1)
    return arr if arr.size == 3 else None


def squash_plan(image_processor: Any) -> SquashPlan | None:
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
    normalize = getattr(p, "do_normalize", False)
    mean = _channels(p.image_mean) if normalize else None
    std = _channels(p.image_std) if normalize else None
    if normalize and (mean is None or std is None):
        return None
    resample = p.resample if p.resample is not None else Image.Resampling.BILINEAR
    rescale = float(p.rescale_factor) if getattr(p, "do_rescale", False) else None
    return SquashPlan(int(width), int(height), int(resample), rescale, mean, std)
