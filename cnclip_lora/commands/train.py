"""``cnclip-lora train``: every TrainingArguments flag, a YAML/JSON recipe, then the package's own options."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnclip_lora.commands.base import Command, print_metrics, unknown_options_message
from cnclip_lora.errors import ConfigError
from cnclip_lora.utils.distributed import is_main_process

if TYPE_CHECKING:
    from cnclip_lora.config import CnClipTrainingArguments, DataArguments, LoraArguments, ModelArguments

__all__ = ["TrainCommand", "parse_train_args", "read_recipe", "train_from_argv"]


def read_recipe(path: Path) -> dict[str, Any]:
    """A YAML/JSON recipe as a mapping of option names to values (as the file types them).

    Raises:
        ConfigError: The file is missing, does not parse, or is not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as err:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {err}") from None
    except Exception as err:  # noqa: BLE001 - yaml.YAMLError does not derive from ValueError
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, found {type(data).__name__}.")
    return data


def parse_train_args(
    argv: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelArguments, DataArguments, LoraArguments, CnClipTrainingArguments]:
    """Parse training flags; a first argument ending in .yaml/.yml/.json is read as a recipe.

    Precedence, lowest first: each option's default, the recipe, the flags in ``argv``, then
    ``overrides`` (Python values, e.g. ``{"lora_target_modules": ["query", "value"]}``). The
    recipe and the overrides are applied as typed values, not turned back into flag strings.

    Raises:
        ConfigError: an option value that cannot work, or an unknown option.
    """
    from cnclip_lora.config import option_actions, train_argument_parser, train_arguments, typed_values

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = train_argument_parser()
    options = option_actions(parser)
    recipe: dict[str, Any] = {}
    if argv and Path(argv[0]).suffix.lower() in {".yaml", ".yml", ".json"}:
        recipe = typed_values(read_recipe(Path(argv[0])), options, source=argv[0])
        argv = argv[1:]
    given = set(recipe) | {str(k) for k in (overrides or {})}
    for action in options.values():
        if action.dest in given:
            action.required = False  # supplied by the recipe or the call, not missing
    parser.set_defaults(**recipe)
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise ConfigError(unknown_options_message("train", remaining))
    return train_arguments(overrides or {}, parser=parser, namespace=vars(namespace))


def train_from_argv(argv: Sequence[str], **overrides: Any) -> Any:
    """Train from command-line flags (a recipe first, if any), then ``overrides``: what ``cnclip-lora
    train`` runs. Returns the :class:`~cnclip_lora.training.run.TrainResult`."""
    from cnclip_lora.training.run import run_launched

    return run_launched(*parse_train_args(list(argv), overrides))


class TrainCommand(Command):
    name = "train"
    help = "fine-tune LoRA adapters (all TrainingArguments flags; accepts a YAML/JSON recipe)"

    def parser(self) -> argparse.ArgumentParser:
        from cnclip_lora.config import train_argument_parser

        return train_argument_parser(
            prog="cnclip-lora train",
            description="Fine-tune Chinese-CLIP with LoRA. Usage: cnclip-lora train [RECIPE.yaml] [--flag value ...] "
            "(flags after the recipe override it)",
        )

    def parse(self, argv: Sequence[str]) -> tuple:
        if "-h" in argv or "--help" in argv:
            self.parser().print_help()
            raise SystemExit(0)
        return parse_train_args(list(argv))

    def run(self, args: tuple) -> int:
        from cnclip_lora.training.run import run_launched

        result = run_launched(*args)
        if is_main_process():
            print(f"adapter saved to {result.output_dir}")
            if result.eval_metrics:
                print_metrics(result.eval_metrics)
            if result.pushed_to:
                print(f"pushed to {result.pushed_to}")
        return 0
