"""Atomic file output: a crash mid-write never leaves a partial file at the final path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place on success.

    The temporary file lives in the same directory so the final ``os.replace`` is an
    atomic rename on POSIX. On any exception the temporary file is removed and the
    final path is left untouched (old content, or absent).
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(final_path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``final_path`` atomically."""
    with atomic_path(final_path) as tmp:
        tmp.write_text(text, encoding=encoding)
