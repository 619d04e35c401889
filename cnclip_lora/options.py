"""Option vocabularies and shared defaults, each spelled once.

Every choice a user can name on the command line, in a recipe or in :func:`cnclip_lora.train`
(flip rule, pixel cache mode, assignment method, FAISS index, title normalisation, retrieval
backend) is a ``str`` enum here, and the modules that act on a choice compare with its members.
A member *is* its string (``Flip.ALWAYS == "always"``), so records, YAML recipes and argparse
keep plain strings. This module imports nothing beyond the standard library, so the CLI can
offer the choices without importing torch or transformers; :mod:`cnclip_lora.config` re-exports
it beside the arguments dataclasses.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "Assign",
    "Backend",
    "CacheImages",
    "FaissIndex",
    "Flip",
    "TitleNormalization",
    "choices",
    "parse_choice",
]

#: Title length in tokens: the seed recipe's 52 (truncation; batches are padded up to at most this).
DEFAULT_MAX_LENGTH = 52


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
    """How titles are prepared before the tokenizer (see :func:`cnclip_lora.text.prepare_titles`)."""

    OFFICIAL = "official"
    NFKC = "nfkc"


class Backend(_Choice):
    """What computes retrieval embeddings: the torch checkpoint or an ONNX export."""

    TORCH = "torch"
    ONNX = "onnx"


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
