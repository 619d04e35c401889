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

from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.images import pixel_values_from_uint8, preprocess_images
from cnclip_lora.utils.files import atomic_write_text

__all__ = [
    "RECORD_FILE",
    "Preprocessing",
    "ImageTextCollator",
    "tokenize_titles",
    "padded_width",
    "PAD_MULTIPLE",
    "TitleTokenMemo",
    "TITLE_NORMALIZATIONS",
    "prepare_titles",
    "write_record",
]

#: File written beside the adapter: how training saw its inputs, and what the run was.
RECORD_FILE = "cnclip_lora.json"

#: How titles are prepared before the tokenizer. ``official``: the official Chinese-CLIP pipeline's
#: ``_preprocess_text`` (lower-case, curly double quotes -> ``"``), then BERT basic + WordPiece with
#: literal ``[CLS]``-like text kept as ordinary characters: the ids the released checkpoints were
#: trained on. ``nfkc``: NFKC folding, control characters to spaces, whitespace collapsed
#: (:func:`cnclip_lora.data.normalize_title`), the package's behaviour before ``official`` existed.
TITLE_NORMALIZATIONS = ("official", "nfkc")


@dataclass
class Preprocessing:
    """How titles and images were prepared in training; retrieval replays it.

    Args:
        max_length: longest title in tokens (truncation; padding up to it is per batch).
        train_flip: ``always`` | ``random`` | ``none``.
        exif_transpose: images are turned upright by their EXIF orientation (always on: both paths
            use :func:`cnclip_lora.data.open_image`); recorded so the rule is explicit.
        draft: JPEGs are decoded at a reduced scale (PIL draft mode) when the processor's target is at
            most half the stored size (``--fast_decode``); cheaper decoding, slightly different pixels
            from the official transform, so it is replayed too. Off by default.
        title_normalization: one of :data:`TITLE_NORMALIZATIONS`. A record written before the field
            existed replays ``nfkc``, the behaviour it was trained with.
    """

    max_length: int = 52
    train_flip: str = "none"
    exif_transpose: bool = True
    draft: bool = False
    title_normalization: str = "official"

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
            title_normalization=str(data.get("title_normalization", "nfkc")),
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


def prepare_titles(titles: Sequence[str], title_normalization: str = "official") -> list[str]:
    """Titles as the tokenizer must see them under ``title_normalization`` (see
    :data:`TITLE_NORMALIZATIONS`); raises ``ValueError`` for an unknown mode."""
    if title_normalization == "official":
        # The official data pipelines' _preprocess_text; the tokenizer lower-cases again (a no-op).
        return [str(t).lower().replace("\u201c", '"').replace("\u201d", '"') for t in titles]
    if title_normalization == "nfkc":
        from cnclip_lora.data import normalize_title

        return [normalize_title(t) for t in titles]
    raise ValueError(f"title normalization must be one of {', '.join(TITLE_NORMALIZATIONS)}; got {title_normalization!r}")


#: Dynamic padding rounds each batch's width up to a multiple of this (tensor-core friendly
#: shapes, and fewer distinct shapes for kernels to plan for).
PAD_MULTIPLE = 8


def padded_width(longest: int, max_length: int) -> int:
    """Width of a dynamically padded batch: its longest title rounded up to a multiple of
    :data:`PAD_MULTIPLE`, never more than ``max_length``."""
    return min(max_length, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def _pad_values(tokenizer: Any) -> dict[str, int]:
    return {"input_ids": getattr(tokenizer, "pad_token_id", None) or 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}


def tokenize_titles(
    titles: Sequence[str],
    tokenizer: Any,
    max_length: int = 52,
    title_normalization: str = "official",
    *,
    pad_to_max_length: bool = False,
) -> dict[str, torch.Tensor]:
    """Tokenise titles, truncated to ``max_length`` tokens (``truncation=True`` alone would not
    cut: the checkpoints' ``model_max_length`` is effectively unbounded).

    Under ``official`` a literal ``[CLS]``, ``[SEP]``, ``[PAD]``... inside a title is split into
    ordinary characters as the official tokenizer does (``split_special_tokens``), so a title
    cannot inject a separator or padding id.

    By default the batch is padded to its longest title rounded up to a multiple of
    :data:`PAD_MULTIPLE` (see :func:`padded_width`): padded positions are masked out, so the
    embeddings are those of fixed padding while the text tower does less work on short titles.
    ``pad_to_max_length`` pads every batch to exactly ``max_length`` (one static shape, for
    compiled graphs).
    """
    official = title_normalization == "official"
    if official:
        _official_word_limit(tokenizer)
    enc = dict(
        tokenizer(
            prepare_titles(titles, title_normalization),
            padding="max_length" if pad_to_max_length else "longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            **({"split_special_tokens": True} if official else {}),
        )
    )
    if pad_to_max_length or not enc:
        return enc
    width = next(iter(enc.values())).shape[1]
    target = padded_width(width, max_length)
    if target <= width:
        return enc
    fill = _pad_values(tokenizer)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for key, values in enc.items():
        extra = values.new_full((values.shape[0], target - width), fill.get(key, 0))
        enc[key] = torch.cat([extra, values] if left else [values, extra], dim=1)
    return enc


def _official_word_limit(tokenizer: Any) -> None:
    """The official WordPiece gives ``[UNK]`` only for words over 200 characters; the HF default is 100."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if getattr(model, "max_input_chars_per_word", 200) != 200:
        model.max_input_chars_per_word = 200


class TitleTokenMemo:
    """Token rows of titles already tokenised, so later epochs skip the tokenizer.

    Titles are deterministic input (no augmentation), and the tokenizer is a real share of a
    small model's step (~2-3 ms for 32 titles against a ~60 ms step on 2 cores). Each row is
    stored padded to ``max_length`` on its own, so a remembered row equals the row the tokenizer
    would give inside any batch; a dynamically padded batch is the stored rows cut to
    :func:`padded_width` of the batch's longest title (read from the attention mask). Rows are stored narrow (ids int32, masks int8: ~0.3 KB per title)
    and at most ``capacity`` titles are kept; titles beyond it are tokenised every time.
    Each DataLoader worker holds its own memo (persistent workers keep it across epochs).
    """

    def __init__(self, capacity: int = 1 << 18):
        self.capacity = capacity
        self._row: dict[str, int] = {}
        self._store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._row)

    def __call__(
        self,
        titles: Sequence[str],
        tokenizer: Any,
        max_length: int,
        title_normalization: str = "official",
        pad_to_max_length: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rows of ``titles``; one memo serves one ``(tokenizer, max_length, title_normalization)``."""
        titles = list(titles)
        new = [t for t in dict.fromkeys(titles) if t not in self._row]
        if new:
            if len(self._row) + len(new) > self.capacity:
                return tokenize_titles(titles, tokenizer, max_length, title_normalization,
                                       pad_to_max_length=pad_to_max_length)
            self._remember(new, tokenize_titles(new, tokenizer, max_length, title_normalization, pad_to_max_length=True))
        rows = torch.tensor([self._row[t] for t in titles], dtype=torch.long)
        out = {key: store.index_select(0, rows).long() for key, store in self._store.items()}
        mask = out.get("attention_mask")
        if pad_to_max_length or mask is None or not len(titles):
            return out
        width = padded_width(int(mask.sum(dim=1).max()), max_length)
        left = getattr(tokenizer, "padding_side", "right") == "left"
        return {key: (v[:, v.shape[1] - width :] if left else v[:, :width]).contiguous() for key, v in out.items()}

    def _remember(self, titles: list[str], enc: dict[str, torch.Tensor]) -> None:
        n = len(self._row)
        if not self._store:
            # ids need 32 bits; masks and segment ids fit 8 (widened below if a value does not).
            self._store = {k: v.new_empty((0, v.shape[1]), dtype=torch.int32 if k == "input_ids" else torch.int8)
                           for k, v in enc.items()}  # fmt: skip
        for key, values in enc.items():
            store = self._store[key]
            if store.shape[0] < n + len(titles):  # grow by doubling (amortised O(1) per title), up to capacity
                grown = store.new_empty((min(self.capacity, max(64, 2 * (n + len(titles)))), store.shape[1]))
                grown[:n] = store[:n]
                store = self._store[key] = grown
            narrow = values.to(store.dtype)
            if not torch.equal(narrow.long(), values.long()):  # a value the narrow dtype cannot hold
                store = self._store[key] = store.long()
                narrow = values.long()
            store[n : n + len(titles)] = narrow
        self._row.update((t, n + i) for i, t in enumerate(titles))


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
    max_length: int = 52
    flip: str = "random"
    draft: bool = False
    #: How titles reach the tokenizer (:data:`TITLE_NORMALIZATIONS`).
    title_normalization: str = "official"
    #: A :class:`cnclip_lora.training.pixel_cache.PixelCache` of the rows' images: they are then taken
    #: resized from it instead of being opened, and only flipped and normalised here.
    pixel_cache: Any = None
    #: Titles remembered after their first tokenisation (:class:`TitleTokenMemo`); 0 turns it off.
    max_memo_titles: int = 1 << 18
    #: Pad every batch to ``max_length`` (static shapes for compiled graphs) instead of to its
    #: longest title (see :func:`tokenize_titles`).
    pad_to_max_length: bool = False

    def __post_init__(self) -> None:
        self._token_memo = TitleTokenMemo(self.max_memo_titles) if self.max_memo_titles > 0 else None

    def _tokens(self, titles: list[str]) -> dict[str, torch.Tensor]:
        if self._token_memo is None:
            return tokenize_titles(titles, self.processor.tokenizer, self.max_length, self.title_normalization,
                                   pad_to_max_length=self.pad_to_max_length)
        return self._token_memo(titles, self.processor.tokenizer, self.max_length, self.title_normalization,
                                self.pad_to_max_length)

    def _flips(self, n: int) -> list[bool]:
        if self.flip == "always":
            return [True] * n
        if self.flip == "random":
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
