"""Atomic file output: a crash mid-write never leaves a partial file at the final path.

Every file the package writes (submission, top-k, records, adapters, model cards) goes through
these helpers: the bytes land in a temporary name in the destination's own folder and are
renamed into place only once complete, because ``os.replace`` within one file system is atomic
on POSIX and Windows. A reader therefore sees the old file, or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cnclip_lora.adapter import WEIGHTS_FILE
from cnclip_lora.errors import CnClipLoraError, ConfigError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "staged_dir",
    "default_file_mode",
    "checkpoint_problem",
    "latest_complete_checkpoint",
    "resolve_resume_checkpoint",
    "hash_file_stats",
    "PICKLE_SUFFIXES",
    "is_pickle",
    "pickled_files",
    "remove_stale_temps",
    "WRITE_ERRNOS",
    "write_error_message",
    "disk_errno",
    "remove_incomplete_checkpoints",
    "temp_prefix",
]

logger = logging.getLogger(__name__)

#: The one pickle policy: weight files in these formats unpickle on load (``torch.load``, ``pickle``),
#: so they can execute code. The package never reads or downloads them; base checkpoints and
#: adapters must be safetensors.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pickle", ".pkl", ".pt", ".pth")


def is_pickle(name: str | os.PathLike) -> bool:
    """Whether a file name is in a format that can execute code when loaded (:data:`PICKLE_SUFFIXES`)."""
    return Path(name).suffix.lower() in PICKLE_SUFFIXES


def pickled_files(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the pickle-format files at the top of ``folder`` (``[]`` if it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and is_pickle(p.name))


def hash_file_stats(h: Any, paths: Iterable[str]) -> None:
    """Feed each path with its stat identity into the hash ``h``: a cache key that changes when a
    file is replaced or written, even by a copy that restores its size and mtime (the inode or the
    ctime changes), without reading gigabytes of images on every run."""
    for item in paths:
        st = os.stat(item)
        h.update(f"{item}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}".encode())
        h.update(b"\0")


#: Checkpoint folder names the Trainer writes: ``checkpoint-<global step>``.
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "trainer_state.json"
_WEIGHT_FILES = (WEIGHTS_FILE, "model.safetensors", "model.safetensors.index.json")
_RESUME_LATEST = {"true", "yes", "1", "last", "latest"}
_RESUME_NONE = {"", "false", "no", "0", "none"}


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


#: Errors of the disk, not of the program: no space, quota, read-only file system, no permission.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_error_message(final: Path, err: OSError, *, after: str = "nothing was written there") -> str:
    """One line for an output that could not be written: the path, why, the free space left there
    and (``after``) what became of the output."""
    try:
        free = shutil.disk_usage(final.parent).free
        room = f"; {free:,} bytes free on that file system"
    except OSError:
        room = ""
    fix = "free some space or write elsewhere" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else (
        "choose a folder you can write to")  # fmt: skip
    return f"cannot write {final}: {err.strerror or err}{room}; {fix} ({after})."


#: How libraries that wrap the C library's error word a full disk, quota or read-only disk
#: (Rust crates: "os error 28"; Python: the strerror text).
_DISK_WORDS = {
    errno.ENOSPC: ("No space left on device", "os error 28"),
    errno.EDQUOT: ("Disk quota exceeded", "os error 122"),
    errno.EROFS: ("Read-only file system", "os error 30"),
}


def disk_errno(err: BaseException, where: str | os.PathLike) -> int | None:
    """The errno of a write that failed for want of disk space (or quota, or a read-only disk), also
    when a library wrapped it in its own exception (tokenizers' ``Exception: ... (os error 28)``,
    torch's ``PytorchStreamWriter failed writing file``, judged by the free space at ``where``);
    ``None`` for any other error."""
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return err.errno
    text = str(err)
    for code, words in _DISK_WORDS.items():
        if any(w in text for w in words):
            return code
    if "failed writing file" in text or "file write failed" in text:
        try:
            if shutil.disk_usage(where).free < (16 << 20):
                return errno.ENOSPC
        except OSError:
            return None
    return None


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``checkpoint-N`` folders in ``output_dir`` that a failed save left incomplete
    (:func:`checkpoint_problem`); complete ones are kept for a resume."""
    removed = []
    for folder in _checkpoints(Path(output_dir)):
        if checkpoint_problem(folder) is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def temp_prefix(final: Path) -> str:
    """The name prefix of a temporary file or folder beside ``final``: hidden, and carrying this
    process's id, so a later run can tell the litter of a killed run from a live one's work."""
    return f".{final.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete the temporary files and folders a killed run left beside ``final`` (their process is
    gone); returns what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)\..*\.tmp$")
    for entry in final.parent.glob(f".{final.name}.*.tmp") if final.parent.is_dir() else ():
        match = pattern.match(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d temporary file(s) a stopped run left beside %s", len(removed), final)
    return removed


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
    remove_stale_temps(final)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise CnClipLoraError(write_error_message(final, err)) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _final_mode(final))
        os.replace(tmp_path, final)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise CnClipLoraError(write_error_message(final, err)) from err
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
    folder is deleted (with ``final_dir`` itself if this call created it and it stayed empty); a
    full disk, quota or read-only folder is one :class:`CnClipLoraError` line naming the file. A
    staging folder a killed run left is removed by the next call.

    Args:
        final_dir: Destination folder (created if missing).
    """
    final = Path(final_dir)
    created = not final.exists()
    try:
        final.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final / "staging")  # a killed run's staging folder
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(final / "staging"), suffix=".tmp", dir=final))
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise CnClipLoraError(write_error_message(final / "staging", err)) from err
    try:
        yield staging
        mode = default_file_mode()
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            dst = final / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, _final_mode(dst) if dst.exists() else mode)
            os.replace(src, dst)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if created and final.is_dir() and not any(final.iterdir()):
            final.rmdir()  # no empty folder at the final path
        if err.errno not in WRITE_ERRNOS:
            raise
        raise CnClipLoraError(write_error_message(final / Path(err.filename or "").name, err)) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------ checkpoints
# The Trainer writes checkpoint-N in place: weights, optimizer, scheduler, RNG states, and
# trainer_state.json last. A process killed mid-save leaves a folder without a readable
# trainer_state.json; such a folder is never resumed from.


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete Trainer checkpoint, or ``None`` when it is one.

    Complete means: a folder whose ``trainer_state.json`` (written last) parses, whose
    ``global_step`` matches a ``checkpoint-N`` name, and which holds safetensors weights.

    Args:
        path: A checkpoint folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        return "not a folder"
    try:
        state = json.loads((folder / _STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {_STATE_FILE} (the save was interrupted)"
    except (OSError, ValueError):
        return f"unreadable {_STATE_FILE} (the save was interrupted)"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{_STATE_FILE} has no global_step"
    match = _CHECKPOINT_RE.match(folder.name)
    if match and int(match.group(1)) != state["global_step"]:
        return f"{_STATE_FILE} says step {state['global_step']}, the folder name says {match.group(1)}"
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        return "no safetensors weights"
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """``(latest complete checkpoint or None, incomplete checkpoints newer than it)``.

    Unlike ``transformers.trainer_utils.get_last_checkpoint``, a folder left half-written by
    a killed process is skipped, so a resume never starts from a truncated checkpoint.

    Args:
        output_dir: The training output folder holding ``checkpoint-N`` folders.
    """
    skipped: list[Path] = []
    for folder in reversed(_checkpoints(Path(output_dir))):
        if checkpoint_problem(folder) is None:
            return folder, skipped
        skipped.append(folder)
    return None, skipped


def resolve_resume_checkpoint(value: str | bool | os.PathLike | None, output_dir: str | os.PathLike) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a complete checkpoint folder (or ``None``).

    ``true``/``last`` pick the newest *complete* ``checkpoint-N`` in ``output_dir``; a folder is
    checked and refused when incomplete; ``false``/empty/``None`` means a fresh start.

    Args:
        value: The option as given (bool, string or path).
        output_dir: The run's output folder.

    Raises:
        ConfigError: No complete checkpoint to resume from, or the named one is incomplete.
    """
    if value is None or value is False:
        return None
    text = "true" if value is True else str(value).strip()
    if text.lower() in _RESUME_NONE:
        return None
    if text.lower() in _RESUME_LATEST and not Path(text).is_dir():
        latest, skipped = latest_complete_checkpoint(output_dir)
        for folder in skipped:
            logging.getLogger(__name__).warning("skipping %s: %s", folder, checkpoint_problem(folder))
        if latest is None:
            extra = f" ({len(skipped)} incomplete: {', '.join(p.name for p in skipped)})" if skipped else ""
            raise ConfigError(
                f"--resume_from_checkpoint {text}: no complete checkpoint-N folder in {output_dir}{extra}; "
                "start without --resume_from_checkpoint, or pass a checkpoint folder"
            )
        return str(latest)
    problem = checkpoint_problem(text)
    if problem is not None:
        latest, _ = latest_complete_checkpoint(Path(text).parent)
        hint = f"; the latest complete one is {latest}" if latest else ""
        raise ConfigError(f"--resume_from_checkpoint {text}: not a complete checkpoint ({problem}){hint}")
    return text
