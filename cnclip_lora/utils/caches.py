"""Where cnclip-lora keeps what it can recompute, and how to see or clear it.

The caches live under one root, ``datasets``' cache folder (``HF_DATASETS_CACHE``, by default
``~/.cache/huggingface/datasets``) + ``cnclip_lora/``, because both are ``datasets.map`` results:

* ``pixels/``: decoded, resized training and validation images (:mod:`cnclip_lora.training.pixel_cache`);
* ``embeddings/``: retrieval's gallery and query embeddings (:mod:`cnclip_lora.retrieve.run`);
* ``images/``: the image files a Chinese-CLIP ``{split}_imgs.tsv`` encodes (:mod:`cnclip_lora.data.cnclip_layout`).

Their file names are fingerprints of everything that affects the content (model and adapter
files by content, image files by their stat identity, preprocessing), so one cache serves every working
directory and project without ever returning stale results. ``cnclip-lora cache`` lists and clears them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cnclip_lora.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "CACHE_KINDS",
    "CacheUsage",
    "cache_root",
    "cache_usage",
    "clear_cache",
    "content_digest",
    "default_cache_dir",
    "human_bytes",
    "usable_cache_dir",
]

logger = logging.getLogger(__name__)

#: The caches this package writes, each a sub-folder of :func:`cache_root`.
CACHE_KINDS = ("pixels", "embeddings", "images")


def cache_root() -> Path:
    """``HF_DATASETS_CACHE/cnclip_lora``: read at call time, so the environment variable set after
    import (tests, notebooks) is honoured."""
    import datasets  # only when a cache is used: importing datasets costs about a second

    return Path(datasets.config.HF_DATASETS_CACHE) / "cnclip_lora"


def default_cache_dir(kind: str) -> Path:
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(CACHE_KINDS)}")
    return cache_root() / kind


def usable_cache_dir(requested: str | os.PathLike | None, kind: str, *, required: bool = False) -> Path | None:
    """The folder to keep ``kind`` in, created and writable, or ``None`` to run without the cache.

    A cache only saves time, so an unwritable *default* location (a read-only home, a shared
    ``HF_DATASETS_CACHE``) is a warning and the work runs uncached. A folder the user named with
    ``--cache_dir``, or a cache they required (``--cache_images true``), is an error naming the
    folder, raised before any expensive work.
    """
    path = Path(requested) if requested else default_cache_dir(kind)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {path}")
    except OSError as err:
        fix = (
            "choose a writable --cache_dir"
            if requested
            else "set HF_DATASETS_CACHE or --cache_dir to a writable folder"
        )
        if requested or required:
            raise ConfigError(f"cannot write the {kind} cache in {path}: {err}; {fix}.") from err
        logger.warning("cannot write the %s cache in %s (%s): continuing without it; %s.", kind, path, err, fix)
        return None
    return path


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
        if usage.kind not in kinds:
            continue
        if usage.path.is_symlink():  # a link the user made: drop the link, never what it points at
            usage.path.unlink()
            continue
        if not usage.path.is_dir():
            continue
        freed += usage.bytes
        try:
            shutil.rmtree(usage.path)
        except OSError as err:
            raise ConfigError(f"cache --clear: cannot delete {usage.path}: {err.strerror}.") from None
    return freed


def human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def read_or_rebuild(build: Callable[[bool], T], cache_files: Callable[[], list[Path]], what: str, redo: str) -> T:
    """``build(True)`` (a cache hit when its file is there); when that fails and a cache file exists, the
    file is damaged or belongs to other inputs: warn, delete it and ``build(False)``. The one rule for
    every cache kind, so none is ever used half-read or trusted blindly."""
    try:
        return build(True)
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many kinds for a damaged file
        damaged = cache_files()
        if not damaged:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        logger.warning("%s %s is damaged or stale (%s): %s again", what, damaged[0], reason, redo)
        for path in damaged:
            path.unlink(missing_ok=True)
        return build(False)


#: The memo of :func:`content_digest`, beside the caches it keys.
DIGEST_MEMO = "file-digests.json"


def content_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of a file's bytes, hashed once per version of the file: with ``memo_dir`` the digest
    is remembered under the file's full ``stat`` identity (device, inode, size, mtime and ctime; a
    write changes ctime even when a copy restores the size and mtime), so a multi-GB checkpoint is
    read on first use only and a file changed in place is never mistaken for the old one."""
    import hashlib
    import json

    from cnclip_lora.utils.files import atomic_write_text

    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    memo_file = Path(memo_dir) / DIGEST_MEMO if memo_dir is not None else None
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            logger.warning("%s: unreadable; file digests are recomputed", memo_file)
        if not isinstance(memo, dict):
            memo = {}
        if isinstance(memo.get(key), str):
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_file is not None:
        memo = {k: v for k, v in memo.items() if not k.startswith(f"{path}|")}  # the file's old versions
        memo[key] = digest
        try:
            atomic_write_text(memo_file, json.dumps(memo, indent=0, sort_keys=True))
        except OSError as err:  # a read-only cache still works; the digest is recomputed next time
            logger.debug("cannot write %s: %s", memo_file, err)
    return digest
