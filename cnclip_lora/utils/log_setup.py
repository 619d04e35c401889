"""One logging set-up for every command: one handler, quiet libraries, only the main process reports.

transformers, huggingface_hub and datasets each install their own stderr handler; with a root
handler beside them every line they log would print twice. Here their handlers are removed and
their records propagate to the single root handler. Under ``torchrun`` every process runs the
command, so processes other than rank 0 log warnings and errors only.
"""

from __future__ import annotations

import importlib
import logging
import sys

from cnclip_lora.utils.distributed import is_main_process

__all__ = ["LOG_LEVELS", "library_bars_follow_terminal", "pop_log_level", "setup_logging"]

#: ``--log_level`` values (TrainingArguments' names; ``passive`` keeps the defaults).
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "detail": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_LIBRARIES = ("transformers", "huggingface_hub", "datasets", "accelerate", "peft", "faiss", "httpx")
_MARK = "_cnclip_lora_handler"


def pop_log_level(argv: list[str], *, keep: bool = False) -> tuple[list[str], str | None]:
    """Find ``--log_level X`` / ``--log_level=X`` in ``argv``; remove it unless ``keep``."""
    out, level, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--log_level" and i + 1 < len(argv):
            level = argv[i + 1]
            if keep:
                out += argv[i : i + 2]
            i += 2
            continue
        if arg.startswith("--log_level="):
            level = arg.split("=", 1)[1]
            if keep:
                out.append(arg)
            i += 1
            continue
        out.append(arg)
        i += 1
    return out, level


def setup_logging(level: str | None = None, *, libraries_too: bool = True) -> None:
    """Configure logging once (calling again replaces the earlier set-up, never adds a handler).

    Args:
        level: A :data:`LOG_LEVELS` name. The package logs at INFO by default and libraries at
            WARNING; an explicit level applies to both. Non-main processes never go below WARNING.
        libraries_too: Import transformers, huggingface_hub and datasets now, to take their own
            handlers off. False for commands that never use them (importing them costs seconds).
    """
    from cnclip_lora.errors import ConfigError

    if level is not None and level != "passive" and level not in LOG_LEVELS:
        raise ConfigError(f"--log_level must be one of {', '.join([*LOG_LEVELS, 'passive'])}; got {level!r}.")
    explicit = LOG_LEVELS.get(level or "passive")
    package = explicit if explicit is not None else logging.INFO
    libraries = explicit if explicit is not None else logging.WARNING
    if not is_main_process():
        package, libraries = max(package, logging.WARNING), max(libraries, logging.WARNING)

    library_loggers = ("transformers.utils.logging", "huggingface_hub.utils.logging", "datasets.utils.logging")
    for module in library_loggers if libraries_too else ():
        try:  # each installs its handler on import: import first, so the handler can be taken off below
            importlib.import_module(module)
        except ImportError:
            pass
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(libraries)
    logging.getLogger("cnclip_lora").setLevel(package)
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        for own in list(library.handlers):  # their own stderr handlers would print every line twice
            library.removeHandler(own)
        library.propagate = True
        library.setLevel(libraries)
    if libraries_too and not _on_terminal():
        _progress_bars_off()
    # faiss logs which of its builds it loads (with the ModuleNotFoundError of the ones it skips).
    logging.getLogger("faiss.loader").setLevel(max(libraries, logging.WARNING))


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def library_bars_follow_terminal() -> None:
    """The libraries' progress bars only on a terminal: for work that imports them after the
    set-up of a light command (``check-data`` reading a ``datasets`` dataset)."""
    if not _on_terminal():
        _progress_bars_off()


def _progress_bars_off() -> None:
    """Redirected output (CI, ``nohup``, a file): no progress bars, whose redraws become single
    huge lines there; the Trainer logs one line per ``--logging_steps`` instead (see
    ``CnClipTrainingArguments.disable_tqdm``) and embedding logs what it embeds."""
    for module, switch in (
        ("datasets", "disable_progress_bars"),
        ("transformers.utils.logging", "disable_progress_bar"),
        ("huggingface_hub.utils", "disable_progress_bars"),
    ):
        try:
            getattr(importlib.import_module(module), switch)()
        except (ImportError, AttributeError):
            pass
