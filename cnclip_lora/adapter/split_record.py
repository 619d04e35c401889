"""The train/validation split a run used, recorded with its adapter and replayed by ``evaluate``.

Held-out recall means something only on images training never saw. ``evaluate --split val`` with
other ``--val_size``/``--split_seed`` than training would score a different held-out set, part of
it trained on, and report inflated recall without any sign. Training therefore records the split
settings and a fingerprint of the held-out image list; ``evaluate`` takes them by default and
refuses a different split (or changed data giving another held-out list) unless asked.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cnclip_lora.adapter.record import RunRecord, SplitRecord
from cnclip_lora.errors import ConfigError
from cnclip_lora.options import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE

__all__ = [
    "DEFAULT_VAL_SIZE",
    "DEFAULT_SPLIT_SEED",
    "split_record",
    "held_out_fingerprint",
    "recorded_split",
    "resolve_split",
    "check_held_out",
]

#: Training's defaults (``DataArguments``), used when nothing is recorded or given.


def held_out_fingerprint(held_out_paths: Any) -> str:
    """sha256 of the sorted, distinct held-out image names."""
    names = sorted({str(p) for p in held_out_paths})
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def split_record(val_size: float | int, split_seed: int, held_out_paths: Any) -> SplitRecord:
    """The ``split`` section of ``cnclip_lora.json``."""
    from cnclip_lora.data import parse_val_size

    names = sorted({str(p) for p in held_out_paths})
    return SplitRecord(
        val_size=parse_val_size(val_size),
        split_seed=split_seed,
        n_held_out_images=len(names),
        held_out_sha256=held_out_fingerprint(names),
    )


def recorded_split(adapter_dir: str | os.PathLike | None) -> SplitRecord | None:
    """The split recorded with an adapter, or ``None`` (no adapter, or one from before splits were recorded).

    Raises:
        cnclip_lora.adapter.record.RecordError: the adapter's record is damaged.
    """
    record = RunRecord.load(adapter_dir) if adapter_dir is not None else None
    split = record.split if record is not None else None
    return split if split is not None and split.val_size is not None else None


def _same_size(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _show(size: Any) -> str:
    try:
        return str(int(size)) if float(size).is_integer() else str(size)
    except (TypeError, ValueError):
        return str(size)


def resolve_split(
    val_size: float | None,
    split_seed: int | None,
    recorded: SplitRecord | None,
    *,
    allow_different_split: bool = False,
    adapter: str | None = None,
) -> tuple[float, int]:
    """``(val_size, split_seed)`` for ``evaluate --split val``: the recorded ones unless given.

    Raises:
        ConfigError: an explicit value differs from the recorded split and ``allow_different_split`` is off.
    """
    if recorded is None:
        return (
            DEFAULT_VAL_SIZE if val_size is None else val_size,
            DEFAULT_SPLIT_SEED if split_seed is None else split_seed,
        )
    rec_size = recorded.val_size
    rec_seed = int(DEFAULT_SPLIT_SEED if recorded.split_seed is None else recorded.split_seed)
    diffs = []
    if val_size is not None and not _same_size(val_size, rec_size):
        diffs.append(f"--val_size {_show(val_size)} (trained with {_show(rec_size)})")
    if split_seed is not None and int(split_seed) != rec_seed:
        diffs.append(f"--split_seed {split_seed} (trained with {rec_seed})")
    if diffs and not allow_different_split:
        raise ConfigError(
            f"adapter {adapter} was trained with another split: {', '.join(diffs)}; its held-out recall would "
            f"include images it was trained on. Leave --val_size/--split_seed unset to use the recorded split, "
            f"or pass --allow_different_split true."
        )
    return (rec_size if val_size is None else val_size, rec_seed if split_seed is None else int(split_seed))


def check_held_out(
    recorded: SplitRecord | None,
    held_out_paths: Any,
    *,
    data_dir: str,
    allow_different_split: bool = False,
    adapter: str | None = None,
) -> None:
    """Refuse a held-out list other than training's (e.g. train.csv changed since).

    Raises:
        ConfigError: the lists differ and ``allow_different_split`` is off.
    """
    if recorded is None or allow_different_split or not recorded.held_out_sha256:
        return
    names = sorted({str(p) for p in held_out_paths})
    if held_out_fingerprint(names) != recorded.held_out_sha256:
        raise ConfigError(
            f"{data_dir}: the held-out images ({len(names)}) differ from those adapter {adapter} was validated on "
            f"({recorded.n_held_out_images}) with the same split settings: train.csv or the images changed "
            f"since training, so some held-out images may have been trained on. Pass --allow_different_split "
            f"true to evaluate anyway."
        )
