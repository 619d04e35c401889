"""The text half of the one preprocessing path: titles -> token ids, for training and retrieval.

How a title reaches the tokenizer is a recorded choice (:class:`cnclip_lora.options.TitleNormalization`,
stored in :class:`cnclip_lora.adapter.record.Preprocessing`), so retrieval tokenises queries exactly as
training tokenised titles. ``official`` is the official Chinese-CLIP pipeline's ``_preprocess_text``
(lower-case, curly double quotes -> ``"``), then BERT basic + WordPiece with literal ``[CLS]``-like
text kept as ordinary characters: the ids the released checkpoints were trained on. ``nfkc`` is NFKC
folding, control characters to spaces, whitespace collapsed (:func:`cnclip_lora.data.normalize_title`),
which older run records replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cnclip_lora.options import DEFAULT_MAX_LENGTH, TitleNormalization, parse_choice

__all__ = ["PAD_MULTIPLE", "TitleTokenMemo", "count_tokens", "padded_width", "prepare_titles", "tokenize_titles"]


def prepare_titles(titles: Sequence[str], title_normalization: str = TitleNormalization.OFFICIAL) -> list[str]:
    """Titles as the tokenizer must see them under ``title_normalization`` (a
    :class:`~cnclip_lora.options.TitleNormalization` value); a ``ConfigError`` (a ``ValueError``)
    names the allowed values for any other."""
    mode = parse_choice(TitleNormalization, title_normalization, "title normalization")
    if mode == TitleNormalization.OFFICIAL:
        # The official data pipelines' _preprocess_text; the tokenizer lower-cases again (a no-op).
        return [str(t).lower().replace("\u201c", '"').replace("\u201d", '"') for t in titles]
    from cnclip_lora.data import normalize_title

    return [normalize_title(t) for t in titles]


#: Dynamic padding rounds each batch's width up to a multiple of this (tensor-core friendly
#: shapes, and fewer distinct shapes for kernels to plan for).
PAD_MULTIPLE = 8


def padded_width(longest: int, max_length: int) -> int:
    """Width of a dynamically padded batch: its longest title rounded up to a multiple of
    :data:`PAD_MULTIPLE`, never more than ``max_length``."""
    return min(max_length, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def _pad_values(tokenizer: Any) -> dict[str, int]:
    return {
        "input_ids": getattr(tokenizer, "pad_token_id", None) or 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
    }


def tokenize_titles(
    titles: Sequence[str],
    tokenizer: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
    title_normalization: str = TitleNormalization.OFFICIAL,
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
    official = title_normalization == TitleNormalization.OFFICIAL
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


def count_tokens(
    titles: Sequence[str], tokenizer: Any, title_normalization: str = TitleNormalization.OFFICIAL
) -> list[int]:
    """Tokens each title takes with ``[CLS]``/``[SEP]``, before truncation, tokenised as
    :func:`tokenize_titles` tokenises it (same preparation, literal special-token text split)."""
    official = title_normalization == TitleNormalization.OFFICIAL
    if official:
        _official_word_limit(tokenizer)
    enc = tokenizer(
        prepare_titles(titles, title_normalization),
        add_special_tokens=True,
        truncation=False,
        verbose=False,
        **({"split_special_tokens": True} if official else {}),
    )
    return [len(ids) for ids in enc["input_ids"]]


def _official_word_limit(tokenizer: Any) -> None:
    """The official WordPiece gives ``[UNK]`` only for words over 200 characters; the HF default is 100."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if getattr(model, "max_input_chars_per_word", 200) != 200:
        model.max_input_chars_per_word = 200


class TitleTokenMemo:
    """Token rows of titles already tokenised, so later epochs skip the tokenizer.

    Titles are deterministic input (no augmentation), and the tokenizer is a real share of a
    small model's step (see benchmarks/RESULTS.md). Each row is
    stored padded to ``max_length`` on its own, so a remembered row equals the row the tokenizer
    would give inside any batch; a dynamically padded batch is the stored rows cut to
    :func:`padded_width` of the batch's longest title (read from the attention mask). Rows are stored
    narrow (ids int32, masks int8: ~0.3 KB per title)
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
        title_normalization: str = TitleNormalization.OFFICIAL,
        pad_to_max_length: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rows of ``titles``; one memo serves one ``(tokenizer, max_length, title_normalization)``."""
        titles = list(titles)
        new = [t for t in dict.fromkeys(titles) if t not in self._row]
        if new:
            if len(self._row) + len(new) > self.capacity:
                return tokenize_titles(
                    titles, tokenizer, max_length, title_normalization, pad_to_max_length=pad_to_max_length
                )
            rows = tokenize_titles(new, tokenizer, max_length, title_normalization, pad_to_max_length=True)
            self._remember(new, rows)
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
            self._store = {
                k: v.new_empty((0, v.shape[1]), dtype=torch.int32 if k == "input_ids" else torch.int8)
                for k, v in enc.items()
            }
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
