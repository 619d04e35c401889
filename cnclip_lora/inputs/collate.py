"""``ImageTextCollator``: ``{"title", "path"}`` rows -> a model batch, inside DataLoader workers.

Images go through :mod:`cnclip_lora.inputs.images` and titles through :mod:`cnclip_lora.inputs.text`, the one
input path training, evaluation and retrieval share; the choices that matter (flip rule, title
preparation, length) are recorded next to the adapter as a :class:`cnclip_lora.adapter.record.Preprocessing`,
so the gallery is embedded exactly as the training images were seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnclip_lora.inputs.images import pixel_values_from_uint8, preprocess_images
from cnclip_lora.inputs.text import TitleTokenMemo, tokenize_titles
from cnclip_lora.options import DEFAULT_MAX_LENGTH, Flip, TitleNormalization, parse_choice

__all__ = ["ImageTextCollator", "row_flip"]


def row_flip(seed: int, epoch: int, row: int) -> bool:
    """Whether ``row`` is mirrored in ``epoch``: a fair coin fixed by the three numbers (a hash, so
    it is the same on every platform, process and worker)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=1).digest()
    return bool(digest[0] & 1)


@dataclass
class ImageTextCollator:
    """Turn ``{"title", "path"}`` rows into a model batch, inside DataLoader workers.

    Reads ``title`` (str) and ``path`` (file name relative to ``image_dir``) from each row and
    returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, T]`` (``T``: the batch's
    longest title rounded up to a multiple of 8, or ``max_length`` with ``pad_to_max_length``) and
    ``pixel_values`` ``[B, 3, H, W]``. Random flips are decided here (never in a cached
    ``datasets.map``): with ``flip_seed`` set (training sets the run's seed) each row's flip is a
    function of ``(flip_seed, epoch, row)`` -- the row's ``row`` field and the epoch given to
    :meth:`set_epoch` -- so a resumed run flips exactly as an uninterrupted one, in any process or
    DataLoader worker; without it, flips come from torch's generator. With a ``pixel_cache`` only
    the deterministic part (decode + resize) comes from the cache; flips and normalisation still
    happen here, so a cached batch equals an uncached one.

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
    #: Seed of the per-row random flips (see above); ``None``: torch's generator.
    flip_seed: int | None = None

    def __post_init__(self) -> None:
        self.flip = parse_choice(Flip, self.flip, "flip")
        self._token_memo = TitleTokenMemo(self.max_memo_titles) if self.max_memo_titles > 0 else None
        # In shared memory: DataLoader workers (persistent ones too) see the epoch the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next rows are drawn in (the Trainer's epoch callback calls it)."""
        self._epoch.fill_(int(epoch))

    def _tokens(self, titles: list[str]) -> dict[str, torch.Tensor]:
        if self._token_memo is None:
            return tokenize_titles(
                titles,
                self.processor.tokenizer,
                self.max_length,
                self.title_normalization,
                pad_to_max_length=self.pad_to_max_length,
            )
        return self._token_memo(
            titles, self.processor.tokenizer, self.max_length, self.title_normalization, self.pad_to_max_length
        )

    def _flips(self, rows: list[dict[str, Any]]) -> list[bool]:
        n = len(rows)
        if self.flip == Flip.ALWAYS:
            return [True] * n
        if self.flip == Flip.RANDOM:
            if self.flip_seed is not None and all("row" in row for row in rows):
                epoch = int(self._epoch)
                return [row_flip(self.flip_seed, epoch, int(row["row"])) for row in rows]
            return (torch.rand(n) < 0.5).tolist()
        return [False] * n

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._tokens([row["title"] for row in rows])
        flips = self._flips(rows)
        image_processor = self.processor.image_processor
        if self.pixel_cache is not None:
            pixels = self.pixel_cache.get([row["path"] for row in rows])
            batch["pixel_values"] = pixel_values_from_uint8(pixels, flips, image_processor)
        else:
            paths = [Path(self.image_dir) / row["path"] for row in rows]
            batch["pixel_values"] = preprocess_images(paths, image_processor, flips=flips, draft=self.draft)
        return batch
