"""Where cnclip-lora keeps what it can recompute, and how to see or clear it.

Both caches live under one root, ``datasets``' cache folder (``HF_DATASETS_CACHE``, by default
``~/.cache/huggingface/datasets``) + ``cnclip_lora/``, because both are ``datasets.map`` results:

* ``pixels/``: decoded, resized training and validation images (:mod:`cnclip_lora.pixel_cache`);
* ``embeddings/``: retrieval's gallery and query embeddings (:mod:`cnclip_lora.retrieve`).

Their file names are fingerprints of everything that affects the content (model identity, adapter
weights, file sizes and mtimes, preprocessing), so one cache serves every working directory and
project without ever returning stale results. ``cnclip-lora cache`` lists and clears them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets

__all__ = ["CACHE_KINDS", "CacheUsage", "cache_root", "cache_usage", "clear_cache", "default_cache_dir", "human_bytes"]

#: The caches this package writes, each a sub-folder of :func:`cache_root`.
CACHE_KINDS = ("pixels", "embeddings")


def cache_root() -> Path:
    """``HF_DATASETS_CACHE/cnclip_lora``: read at call time, so the environment variable set after
    import (tests, notebooks) is honoured."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "cnclip_lora"


def default_cache_dir(kind: str) -> Path:
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(CACHE_KINDS)}")
    return cache_root() / kind


@dataclass(frozen=True)
class CacheUsage:
    kind: str
    path: Path
    files: int
    bytes: int


def cache_usage() -> list[CacheUsage]:
    """Files and bytes of each cache kind (0 where the folder does not exist yet)."""
    usage = []
    for kind in CACHE_KINDS:
        path = default_cache_dir(kind)
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        usage.append(CacheUsage(kind, path, len(files), sum(p.stat().st_size for p in files)))
    return usage


def clear_cache(kinds: tuple[str, ...] = CACHE_KINDS) -> int:
    """Delete the given cache folders; returns the bytes freed. Only this package's folders are
    touched, never the rest of ``HF_DATASETS_CACHE``."""
    freed = 0
    for usage in cache_usage():
        if usage.kind in kinds and usage.path.is_dir():
            freed += usage.bytes
            shutil.rmtree(usage.path)
    return freed


def human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
