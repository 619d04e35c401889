"""The one preprocessing path shared by training and retrieval.

Training and retrieval both go through :func:`load_image`, :func:`preprocess_images` and
:func:`tokenize_titles`, and the choices that matter (flip rule, title length) are recorded
next to the adapter as a :class:`Preprocessing`, so the gallery is embedded exactly as the
training images were seen. The seed solution flipped every training image but not the gallery;
this module exists so that cannot happen again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from cnclip_lora.data import open_image
from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.io_utils import atomic_write_text

__all__ = [
    "RECORD_FILE",
    "Preprocessing",
    "ImageTextCollator",
    "load_image",
    "preprocess_images",
    "tokenize_titles",
    "target_image_size",
    "write_record",
]

#: File written beside the adapter: how training saw its inputs, and what the run was.
RECORD_FILE = "cnclip_lora.json"


@dataclass
class Preprocessing:
    """How titles and images were prepared in training; retrieval replays it.

    Args:
        max_length: title length in tokens (padding and truncation).
        train_flip: ``always`` | ``random`` | ``none``.
        exif_transpose: images are turned upright by their EXIF orientation (always on: both paths
            use :func:`cnclip_lora.data.open_image`); recorded so the rule is explicit.
        draft: JPEGs are decoded at a reduced scale (PIL draft mode) when the processor's target is at
            most half the stored size; cheaper decoding, slightly different pixels, so it is replayed too.
    """

    max_length: int = 52
    train_flip: str = "none"
    exif_transpose: bool = True
    draft: bool = True

    @property
    def inference_flip(self) -> bool:
        """Flip gallery images at retrieval time exactly when every training image was flipped."""
        return self.train_flip == "always"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inference_flip": self.inference_flip}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            max_length=int(data.get("max_length", 52)),
            train_flip=str(data.get("train_flip", "none")),
            exif_transpose=bool(data.get("exif_transpose", True)),
            draft=bool(data.get("draft", False)),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Preprocessing | None":
        """Read the record from an adapter folder; ``None`` when the folder has none."""
        path = Path(directory) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CnClipLoraError(f"{path}: not valid JSON ({err}); re-save the adapter.") from err
        return cls.from_dict(data.get("preprocessing", {}))


def write_record(directory: str | os.PathLike, preprocessing: Preprocessing, **sections: Any) -> Path:
    """Write ``cnclip_lora.json`` (preprocessing + any extra sections such as data and lora)."""
    path = Path(directory) / RECORD_FILE
    payload = {"format_version": 1, "preprocessing": preprocessing.to_dict(), **sections}
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")
    return path


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
    draft: bool = True,
) -> torch.Tensor:
    """Open, optionally flip, and run the checkpoint's own image processor: ``[B, 3, H, W]``."""
    if isinstance(flips, bool):
        flips = [flips] * len(paths)
    draft_size = target_image_size(image_processor) if draft else None
    images = [load_image(p, flip=f, draft_size=draft_size) for p, f in zip(paths, flips)]
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def tokenize_titles(titles: Sequence[str], tokenizer: Any, max_length: int = 52) -> dict[str, torch.Tensor]:
    """Tokenise titles to exactly ``max_length`` tokens (``truncation=True`` alone would not cut:
    the checkpoints' ``model_max_length`` is effectively unbounded)."""
    return dict(
        tokenizer(
            list(titles),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


@dataclass
class ImageTextCollator:
    """Turn ``{"title", "path"}`` rows into a model batch, inside DataLoader workers.

    Reads ``title`` (str) and ``path`` (file name relative to ``image_dir``) from each row and
    returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, max_length]`` and
    ``pixel_values`` ``[B, 3, H, W]``. Random flips are drawn here (never in a cached
    ``datasets.map``) from torch's generator, which the Trainer seeds per worker.

    Example::

        collate = ImageTextCollator(processor, "xfdata/image", flip="always")
        batch = collate([{"title": "红色条纹T恤", "path": "0a1b....jpg"}])
    """

    processor: Any
    image_dir: str | os.PathLike
    max_length: int = 52
    flip: str = "always"
    draft: bool = True

    def _flips(self, n: int) -> list[bool]:
        if self.flip == "always":
            return [True] * n
        if self.flip == "random":
            return (torch.rand(n) < 0.5).tolist()
        return [False] * n

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        paths = [Path(self.image_dir) / row["path"] for row in rows]
        batch = tokenize_titles([row["title"] for row in rows], self.processor.tokenizer, self.max_length)
        batch["pixel_values"] = preprocess_images(
            paths, self.processor.image_processor, flips=self._flips(len(rows)), draft=self.draft
        )
        return batch
