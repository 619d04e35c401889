"""Option vocabularies, shared defaults and the tower rule, each spelled once.

Every choice a user can name on the command line, in a recipe or in :func:`cnclip_lora.train`
(flip rule, pixel cache mode, assignment method, FAISS index, title normalisation, retrieval
backend) is a ``str`` enum here, and the modules that act on a choice compare with its members.
A member *is* its string (``Flip.ALWAYS == "always"``), so records, YAML recipes and argparse
keep plain strings. :func:`tower_of` is the one rule that assigns a module, parameter or
adapter-tensor name to its tower (LoRA placement checks, per-tower counts, the model card).
This module imports nothing beyond the standard library, so the CLI and the model card use it
without importing torch or transformers; :mod:`cnclip_lora.config` re-exports the vocabularies
beside the arguments dataclasses.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_VAL_SIZE",
    "Assign",
    "Backend",
    "CacheImages",
    "FaissIndex",
    "Flip",
    "TitleNormalization",
    "TOWERS",
    "choices",
    "check_backend_options",
    "parse_choice",
    "parse_targets",
    "tower_of",
]

#: Title length in tokens: the seed recipe's 52 (truncation; batches are padded up to at most this).
DEFAULT_MAX_LENGTH = 52
#: The held-out share and seed of the train/validation split when neither a flag nor a record gives them.
DEFAULT_VAL_SIZE = 0.1
DEFAULT_SPLIT_SEED = 42
#: ONNX opsets of ``export-onnx``: attention exports from 14; torch's TorchScript exporter writes up to 20.
DEFAULT_OPSET = 17
MIN_OPSET = 14
MAX_OPSET = 20


class _Choice(str, Enum):
    """A ``str`` enum whose ``str()``/``format()`` is the bare value (as ``enum.StrEnum`` on 3.11+)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Flip(_Choice):
    """Horizontal flip of training images; retrieval flips the gallery exactly under ``always``."""

    ALWAYS = "always"
    RANDOM = "random"
    NONE = "none"


class CacheImages(_Choice):
    """``--cache_images``: the uint8 pixel cache of training images."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


class Assign(_Choice):
    """How a retrieval submission picks one image per query."""

    ARGMAX = "argmax"
    HUNGARIAN = "hungarian"


class FaissIndex(_Choice):
    """FAISS index used by ``--use_faiss``: ``flat`` is exact, the others approximate."""

    FLAT = "flat"
    HNSW = "hnsw"
    IVF = "ivf"


class TitleNormalization(_Choice):
    """How titles are prepared before the tokenizer (see :func:`cnclip_lora.inputs.text.prepare_titles`)."""

    OFFICIAL = "official"
    NFKC = "nfkc"


class Backend(_Choice):
    """What computes retrieval embeddings: the torch checkpoint or an ONNX export."""

    TORCH = "torch"
    ONNX = "onnx"


#: The two encoders of Chinese-CLIP; a name in neither is ``"other"`` (projections, ``logit_scale``).
TOWERS = ("text", "vision")


def tower_of(name: str) -> str:
    """``"text"``, ``"vision"`` or ``"other"`` for a module, parameter or adapter-tensor name, with or
    without PEFT's ``base_model.model.`` prefix (``text_model``/``vision_model`` anywhere in its path)."""
    parts = name.split(".")
    if "text_model" in parts:
        return "text"
    if "vision_model" in parts:
        return "vision"
    return "other"


def parse_targets(value: object) -> list[str] | None:
    """LoRA target entries in one form, the one rule for recipes, flags, records and ``apply_lora``:
    ``None`` (or a recorded ``"default..."``) means the default set (Q/K/V of both towers); a
    comma-separated string or a list (whose items may hold commas too) gives its stripped,
    de-duplicated entries in order."""
    if value is None or (isinstance(value, str) and value.strip().startswith("default")):
        return None
    parts = str(value).split(",") if isinstance(value, str) else [p for t in value for p in str(t).split(",")]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def check_backend_options(backend: object, adapter: object, dtype: object) -> None:
    """The ONNX backend takes an export folder with its adapter merged and float32 weights: an adapter or
    a dtype beside it is a :class:`~cnclip_lora.errors.ConfigError` (one rule for the flags and the API)."""
    if backend == Backend.ONNX and (adapter or dtype):
        from cnclip_lora.errors import ConfigError

        raise ConfigError(
            "--backend onnx takes an export folder as --model_name_or_path, with the adapter already merged and "
            "float32 weights: drop --adapter/--dtype (or export again with that adapter)."
        )


def choices(enum: type[_Choice]) -> list[str]:
    """The values of ``enum`` as plain strings, in declaration order (argparse ``choices``, messages)."""
    return [member.value for member in enum]


def parse_choice(enum: type[_Choice], value: object, option: str) -> _Choice:
    """``value`` as a member of ``enum``; a :class:`~cnclip_lora.errors.ConfigError` naming ``option`` and
    the allowed values otherwise."""
    try:
        return enum(value)
    except ValueError:
        from cnclip_lora.errors import ConfigError

        raise ConfigError(f"{option} must be one of {', '.join(choices(enum))}; got {value!r}.") from None
