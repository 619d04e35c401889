"""Atomic file output: a crash mid-write never leaves a partial file at the final path.

Every file the package writes (submission, top-k, records, adapters, model cards) goes through
these helpers: the bytes land in a temporary name in the destination's own folder and are
renamed into place only once complete, because ``os.replace`` within one file system is atomic
on POSIX and Windows. A reader therefore sees the old file, or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text", "staged_dir", "default_file_mode"]


def default_file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give a new file (``0o666`` minus the umask).

    ``mkstemp`` creates files readable by their owner only (0600), which would make a shared
    submission or adapter unreadable to teammates; the final file gets ordinary permissions.
    """
    try:  # Linux exposes the umask without having to change it (os.umask is process-wide and racy).
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _final_mode(final: Path) -> int:
    """Keep the permissions of the file being replaced; new files get the umask default."""
    try:
        return final.stat().st_mode & 0o7777
    except OSError:
        return default_file_mode()


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place on success.

    The temporary file lives in the same directory so the final ``os.replace`` is an atomic
    rename. On any exception the temporary file is removed and the final path is left
    untouched (old content, or absent). The final file keeps the permissions of the file it
    replaces, or gets the usual umask-based ones (not ``mkstemp``'s owner-only 0600).

    Args:
        final_path: Where the file must end up; missing parent folders are created.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _final_mode(final))
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(final_path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``final_path`` atomically (see :func:`atomic_path`).

    Args:
        final_path: Destination file.
        text: Full content.
        encoding: Text encoding (UTF-8 by default).
    """
    with atomic_path(final_path) as tmp:
        tmp.write_text(text, encoding=encoding)


@contextlib.contextmanager
def staged_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success move every file it holds into ``final_dir``.

    For writers that only take a folder (``save_pretrained``): they write into a hidden
    staging folder inside ``final_dir``, and each finished file is then renamed over its final
    name, so no file at a final path is ever partial. Files already in ``final_dir`` that the
    writer did not produce are left alone. On an exception nothing is moved and the staging
    folder is deleted.

    Args:
        final_dir: Destination folder (created if missing).
    """
    final = Path(final_dir)
    final.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=final))
    try:
        yield staging
        mode = default_file_mode()
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            dst = final / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, _final_mode(dst) if dst.exists() else mode)
            os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
