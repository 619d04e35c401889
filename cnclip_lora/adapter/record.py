"""The run record (``cnclip_lora.json``): how training saw its inputs, and what the run was.

Training writes it beside the adapter; retrieval, evaluation, the model card, the adapter checks
and the output-folder guard read it. It is the contract between ``train`` and everything after,
so it is typed here once: :class:`Preprocessing` (replayed at retrieval so the gallery is
embedded exactly as training images were seen) and :class:`RunRecord` with its sections.

Compatibility: the file keeps the JSON layout of earlier releases (same keys, same nesting), so
older cnclip-lora versions read new records, and every field is optional on load, so records
written before a field existed still load. A field whose absence means something other than
its default for new runs says so in its ``absent`` metadata (the value such an old run used).
A record from a newer format version is refused with a message rather than half-read.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.options import DEFAULT_MAX_LENGTH, Flip, TitleNormalization, choices

__all__ = [
    "FORMAT_VERSION",
    "RECORD_FILE",
    "DataSummary",
    "LoraSummary",
    "Preprocessing",
    "RecordError",
    "RunRecord",
    "SplitRecord",
]

#: File written beside the adapter.
RECORD_FILE = "cnclip_lora.json"
#: Layout version this package writes. 1: the layout since records carried a version (a record
#: without one is read as 1: the keys never changed meaning, sections were only added).
FORMAT_VERSION = 1


class RecordError(CnClipLoraError):
    """A run record that cannot be read: not JSON, not an object, a bad value, or a newer format."""


def _absent(f: Any) -> Any:
    """The value a record that lacks field ``f`` stands for: its ``absent`` metadata, else its default."""
    if "absent" in f.metadata:
        return f.metadata["absent"]
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


@dataclass
class Preprocessing:
    """How titles and images were prepared in training; retrieval replays it.

    Args:
        max_length: longest title in tokens (truncation; padding up to it is per batch).
        train_flip: a :class:`~cnclip_lora.options.Flip` value; retrieval flips the gallery only
            under ``always`` (:attr:`inference_flip`).
        exif_transpose: images are turned upright by their EXIF orientation (always on: both paths
            use :func:`cnclip_lora.data.open_image`); recorded so the rule is explicit.
        draft: JPEGs are decoded at a reduced scale (PIL draft mode) when the processor's target is at
            most half the stored size (``--fast_decode``); cheaper decoding, slightly different pixels
            from the official transform, so it is replayed too.
        title_normalization: a :class:`~cnclip_lora.options.TitleNormalization` value. A record
            written before the field existed replays ``nfkc``, the behaviour it was trained with.
    """

    max_length: int = DEFAULT_MAX_LENGTH
    train_flip: str = Flip.RANDOM
    exif_transpose: bool = True
    draft: bool = False
    title_normalization: str = field(default=TitleNormalization.OFFICIAL, metadata={"absent": TitleNormalization.NFKC})

    @property
    def inference_flip(self) -> bool:
        """Flip gallery images at retrieval time exactly when every training image was flipped."""
        return self.train_flip == Flip.ALWAYS

    def to_dict(self) -> dict[str, Any]:
        """The JSON section (plain strings; ``inference_flip`` written out for readers without this class)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {**out, "inference_flip": self.inference_flip}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "preprocessing") -> Preprocessing:
        """Read the section; missing fields take their ``absent`` value (see the module docstring).

        Raises:
            RecordError: a value of the wrong kind, naming ``source`` and the field.
        """
        values = {f.name: data.get(f.name, _absent(f)) for f in fields(cls)}
        max_length = values["max_length"]
        if isinstance(max_length, float) and max_length.is_integer():
            max_length = values["max_length"] = int(max_length)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise RecordError(f"{source}: max_length must be a whole number >= 2; got {max_length!r}.")
        for name in ("exif_transpose", "draft"):
            if not isinstance(values[name], bool):
                raise RecordError(f"{source}: {name} must be true or false; got {values[name]!r}.")
        for name, enum in (("train_flip", Flip), ("title_normalization", TitleNormalization)):
            try:
                values[name] = enum(values[name])
            except ValueError:
                raise RecordError(
                    f"{source}: {name} must be one of {', '.join(choices(enum))}; got {values[name]!r}."
                ) from None
        return cls(**values)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Preprocessing | None:
        """The preprocessing recorded in an adapter folder; ``None`` when the folder has no record."""
        record = RunRecord.load(directory)
        return record.preprocessing if record is not None else None


def _plain(value: Any) -> Any:
    """Enum members as their strings, so the JSON holds plain values."""
    return value.value if isinstance(getattr(value, "value", None), str) else value


@dataclass
class _Section:
    """A record section: known fields typed, unknown keys kept in ``extra`` and written back unchanged."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known}
        )


@dataclass
class DataSummary(_Section):
    """The ``data`` section: what training saw (counts are of rows and images after checks)."""

    data_dir: str | None = None
    #: which reader: "competition" (train.csv + image/), "chinese-clip" (jsonl + tsv, or its LMDB)
    #: or "datasets" (``--dataset_name``; then ``data_dir`` is the dataset's name)
    layout: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    val_gallery_size: int | None = None
    skipped_rows: int | None = None
    truncated_titles: int | None = None
    #: ``max_length`` or ``longest, multiple of 8``.
    title_padding: str | None = None
    pixel_cache: bool | None = None


@dataclass
class SplitRecord(_Section):
    """The ``split`` section: the held-out split, replayed by ``evaluate --split val``
    (see :mod:`cnclip_lora.adapter.split_record`)."""

    val_size: float | int | None = None
    split_seed: int | None = None
    n_held_out_images: int | None = None
    held_out_sha256: str | None = None


@dataclass
class LoraSummary(_Section):
    """The ``lora`` section: the adapter's settings and the modules it adapted per tower."""

    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    #: The requested targets, or a sentence for the default (Q/K/V of both towers).
    targets: list[str] | str | None = None
    #: ``{"text": n, "vision": n}`` as counted after wrapping; checked when the adapter loads.
    adapted_modules: dict[str, int] | None = None


#: Typed sections, in the order they are written.
_SECTIONS: dict[str, type[_Section]] = {"data": DataSummary, "split": SplitRecord, "lora": LoraSummary}


@dataclass
class RunRecord:
    """Everything ``cnclip_lora.json`` holds.

    Args:
        preprocessing: how inputs were prepared (replayed at retrieval).
        base_model: the base checkpoint as named at training time.
        base_identity: the base's identity (:func:`cnclip_lora.adapter.base_identity.base_identity`),
            checked wherever the adapter is loaded.
        data, split, lora: the typed sections; ``None`` when a record has none.
        extra: top-level sections this version does not know, kept so a re-save loses nothing.
        format_version: the layout version the record was written with (saving writes
            :data:`FORMAT_VERSION`).
    """

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    base_model: str | None = None
    base_identity: dict[str, Any] | None = None
    data: DataSummary | None = None
    split: SplitRecord | None = None
    lora: LoraSummary | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the layout earlier releases wrote (absent sections left out)."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "preprocessing": self.preprocessing.to_dict()}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.base_identity is not None:
            out["base_identity"] = self.base_identity
        for key in _SECTIONS:
            section = getattr(self, key)
            if section is not None:
                out[key] = section.to_dict()
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = RECORD_FILE) -> RunRecord:
        """Read a record object; missing sections and fields are allowed (older records).

        Raises:
            RecordError: a newer format version, or a value of the wrong kind, naming ``source``.
        """
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RecordError(f"{source}: format_version must be a whole number >= 1; got {version!r}.")
        if version > FORMAT_VERSION:
            raise RecordError(
                f"{source}: written by a newer cnclip-lora (record format {version}; this version "
                f"reads up to {FORMAT_VERSION}). Upgrade cnclip-lora to use this adapter."
            )
        pre = data.get("preprocessing")
        if pre is not None and not isinstance(pre, dict):
            raise RecordError(f"{source}: 'preprocessing' must be an object; got {type(pre).__name__}.")
        # Sections of the wrong kind were ignored by every reader before the record was typed: still are.
        sections = {
            key: kind.from_dict(data[key]) if isinstance(data.get(key), dict) else None
            for key, kind in _SECTIONS.items()
        }
        identity = data.get("base_identity")
        base_model = data.get("base_model")
        known = {"format_version", "preprocessing", "base_model", "base_identity", *_SECTIONS}
        return cls(
            preprocessing=Preprocessing.from_dict(pre or {}, source=f"{source}: preprocessing"),
            base_model=str(base_model) if base_model else None,
            base_identity=identity if isinstance(identity, dict) else None,
            extra={k: v for k, v in data.items() if k not in known},
            format_version=version,
            **sections,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RunRecord | None:
        """The record of an adapter (or checkpoint) folder; ``None`` when it has none.

        Raises:
            RecordError: the file exists but cannot be read as a record (the message names it).
        """
        path = Path(directory) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise RecordError(f"{path}: not UTF-8 text; re-save the adapter or copy it again.") from None
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: not valid JSON ({err}); re-save the adapter.") from None
        if not isinstance(data, dict):
            raise RecordError(f"{path}: expected a JSON object, found {type(data).__name__}; re-save the adapter.")
        return cls.from_dict(data, source=str(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/cnclip_lora.json`` atomically (never half-written at its final path)."""
        from cnclip_lora.utils.files import atomic_write_text

        path = Path(directory) / RECORD_FILE
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n"
        atomic_write_text(path, text)
        return path
