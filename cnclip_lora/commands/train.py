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


def _refuse_duplicate_json_keys(path: Path):
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ConfigError(f"{path}: option {key!r} is given twice; keep one of the two.")
            seen[key] = value
        return seen

    return pairs


def _load_yaml(text: str, path: Path) -> Any:
    """``yaml.safe_load`` that refuses a key given twice (YAML forbids it; PyYAML keeps the last silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"{path}: option {key!r} is given twice (lines {lines[key]} and {line}); keep one.")
            lines[key] = line
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def read_recipe(path: Path) -> dict[str, Any]:
    """A YAML/JSON recipe as a mapping of option names to values (as the file types them).

    Raises:
        ConfigError: The file is missing, does not parse, or is not a mapping.
    """
    from cnclip_lora.data.tables import UndecodableText, decode_text

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:  # the encodings the data files may have (UTF-8 with or without BOM, UTF-16 with its BOM, GB18030)
        text, _ = decode_text(path.read_bytes())
    except UndecodableText as err:
        where = f", line {err.line}" if err.line else ""
        raise ConfigError(f"{path}{where}: {err.message}.") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_json_keys(path))
        else:
            data = _load_yaml(text, path)
    except ValueError as err:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {err}") from None
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
