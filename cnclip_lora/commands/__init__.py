"""``cnclip-lora`` / ``python -m cnclip_lora``: the commands layer.

Every verb is a command object in its own module (:class:`~cnclip_lora.commands.base.Command`): its
options and what it does with them. This package is the only place that parses flags, reads
recipes for a verb or prints for the user; the library modules take typed values. A verb's module
is imported only when that verb runs, and the retrieval verbs parse without transformers, so
``--help`` and argument errors are instant.

Input errors (:class:`cnclip_lora.errors.CnClipLoraError`) are printed as one message and exit
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import import_module

from cnclip_lora.commands.base import Command

__all__ = ["COMMANDS", "Command", "main"]

#: verb -> (module under cnclip_lora.commands, class), in the order ``--help`` lists them.
_VERBS: dict[str, tuple[str, str]] = {
    "train": ("train", "TrainCommand"),
    "retrieve": ("retrieve", "RetrieveCommand"),
    "evaluate": ("evaluate", "EvaluateCommand"),
    "check-data": ("check_data", "CheckDataCommand"),
    "make-demo-data": ("make_demo_data", "MakeDemoDataCommand"),
    "make-tiny-model": ("make_tiny_model", "MakeTinyModelCommand"),
    "push": ("push", "PushCommand"),
    "demo": ("demo", "DemoCommand"),
    "export-onnx": ("export_onnx", "ExportOnnxCommand"),
    "cache": ("cache", "CacheCommand"),
    "convert-original": ("convert_original", "ConvertOriginalCommand"),
    "report": ("report", "ReportCommand"),
    "serve": ("serve", "ServeCommand"),
}


class _Commands(Mapping[str, Command]):
    """verb -> command object, each verb's module imported on first access."""

    def __init__(self) -> None:
        self._loaded: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            module, cls = _VERBS[name]
            self._loaded[name] = getattr(import_module(f"cnclip_lora.commands.{module}"), cls)()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_VERBS)

    def __len__(self) -> int:
        return len(_VERBS)

    def __contains__(self, name: object) -> bool:
        return name in _VERBS


COMMANDS: Mapping[str, Command] = _Commands()


def _version() -> str:
    """The installed distribution's version (what pip reports), not a copy kept in the source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnclip-lora")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _usage() -> str:
    lines = [
        "usage: cnclip-lora COMMAND [options]   (cnclip-lora COMMAND --help for its options)",
        "       cnclip-lora --version",
        "every command also takes --log_level debug|info|warning|error (default: the package at info, "
        "libraries at warning)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<16} {command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(f"cnclip-lora {_version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cnclip-lora: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.utils.log_setup import pop_log_level, setup_logging

    # train's TrainingArguments has --log_level of its own; the other commands take it here.
    rest, log_level = pop_log_level(rest, keep=command == "train")
    verb = COMMANDS[command]
    try:
        # Parsing (and --help, and the light checks of paths) needs the package's logging only; the
        # libraries' logging is set up once the verb runs, since importing them costs seconds.
        setup_logging(log_level, libraries_too=False)
        args = verb.parse(rest)
        if not verb.light:
            setup_logging(log_level, libraries_too=True)
        return verb.run(args)
    except CnClipLoraError as err:  # DataError's message already lists its problems: print it once
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # no traceback; TrainingInterrupted says how to resume
        print(f"cnclip-lora {command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130
