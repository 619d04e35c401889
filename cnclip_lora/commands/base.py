"""The command object every verb is, and the light dataclass parser of the retrieval verbs.

A verb declares its options (``add_arguments``, or one arguments dataclass) and acts on them
(``run``). This layer is the only place that parses flags or prints for the user; the library
functions it calls take typed values or config objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "Command",
    "DataclassCommand",
    "dataclass_parser",
    "print_metrics",
    "string_to_bool",
    "unknown_options_message",
]


def print_metrics(metrics: dict) -> None:
    """``key  value`` lines on the main process (floats with two decimals)."""
    from cnclip_lora.utils.distributed import is_main_process

    if not is_main_process():
        return
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.2f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def unknown_options_message(verb: str, unknown: Sequence[str]) -> str:
    """``unrecognized arguments: ...``, naming the verb that owns each flag, or the closest flags of
    ``verb`` itself for a typo."""
    import difflib

    from cnclip_lora.commands import COMMANDS

    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    own = [o for action in COMMANDS[verb].parser()._actions for o in action.option_strings if "-" not in o[2:]]
    hints = []
    for flag in flags:
        owners = [name for name in COMMANDS if name != verb and _takes(COMMANDS[name], flag)]
        if owners:
            hints.append(f"{flag} is an option of `cnclip-lora {' / '.join(owners)}`, not of `{verb}`")
            continue
        close = difflib.get_close_matches(flag, own, n=2, cutoff=0.75)
        if close:
            hints.append(f"{flag}: did you mean {' or '.join(close)}?")
    message = f"unrecognized arguments: {' '.join(unknown)}"
    return message + ("; " + "; ".join(hints) if hints else f" (see `cnclip-lora {verb} --help`)")


def _takes(command: Command, flag: str) -> bool:
    try:
        parser = command.parser()
    except ImportError:  # a verb whose optional extra is missing
        return False
    return any(flag in action.option_strings for action in parser._actions)


def string_to_bool(value: str | bool) -> bool:
    """``true/false/yes/no/1/0`` (any case) as a bool; argparse's error otherwise."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("true", "yes", "t", "y", "1"):
        return True
    if lowered in ("false", "no", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _scalar(hint: Any) -> Any:
    """``str | None`` -> ``str``; the one non-None member of a union."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return hint


def dataclass_parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    """An ``argparse`` parser of the dataclass ``cls``'s fields, with ``HfArgumentParser``'s conventions
    (``--field value``, dashed aliases, ``--flag`` / ``--flag false`` for booleans, ``--no_flag`` for
    a boolean that defaults to true, help and choices from the field metadata).

    The retrieval verbs' options are plain scalars; building their parser without importing
    transformers keeps every such verb's ``--help`` and its argument errors instant.
    """
    # No abbreviations: a misspelt flag that happens to prefix a real one must not be taken silently.
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = _scalar(hints[f.name])
        if f.metadata.get("positional"):
            parser.add_argument(f.name, metavar=f.name.upper(), help=f.metadata.get("help"))
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kwargs: dict[str, Any] = {"help": f.metadata.get("help"), "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            kwargs.update(type=string_to_bool, nargs="?", const=True, default=bool(default))
            parser.add_argument(*names, **kwargs)
            if default is True:
                parser.add_argument(f"--no_{f.name}", action="store_false", dest=f.name, help=f"Turn --{f.name} off.")
            continue
        kwargs["type"] = kind if kind in (int, float) else str
        if has_default:
            kwargs["default"] = default
        else:
            kwargs["required"] = True
        parser.add_argument(*names, **kwargs)
    return parser


class Command:
    """One ``cnclip-lora`` verb: ``add_arguments`` declares its options, ``run`` acts on them."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: True for a verb that never uses torch, transformers, datasets or the Hub: it starts without them.
    light: ClassVar[bool] = False

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"cnclip-lora {self.name}", description=self.help)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the verb's options on ``parser`` (argparse exits 2 on a bad flag, 0 after --help)."""

    def parse(self, argv: Sequence[str]) -> Any:
        return self.parser().parse_args(list(argv))

    def run(self, args: Any) -> int:
        """Do the work; the return value is the exit status."""
        raise NotImplementedError

    def __call__(self, argv: Sequence[str]) -> int:
        return self.run(self.parse(argv))


class DataclassCommand(Command):
    """A verb whose options are the fields of one arguments dataclass (:func:`dataclass_parser`) of
    :mod:`cnclip_lora.retrieve.arguments`, named by :attr:`arguments`."""

    #: the verb's dataclass in :mod:`cnclip_lora.retrieve.arguments` (a light module)
    arguments: ClassVar[str]

    def arguments_class(self) -> type:
        from cnclip_lora.retrieve import arguments

        return getattr(arguments, self.arguments)

    def parser(self) -> argparse.ArgumentParser:
        return dataclass_parser(self.arguments_class(), prog=f"cnclip-lora {self.name}", description=self.help)

    def parse(self, argv: Sequence[str]) -> Any:
        parser = self.parser()
        parsed, remaining = parser.parse_known_args(list(argv))
        if remaining:  # argparse's own exit status 2, with the verb that owns the flag named
            parser.error(unknown_options_message(self.name, remaining))
        args = self.arguments_class()(**vars(parsed))
        check = getattr(args, "check_sources", None)
        if check is not None:  # a mistyped model or adapter path, before any heavy import
            check()
        return args
