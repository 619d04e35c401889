"""Command-line / config-file arguments for training, as documented dataclasses.

Four groups, parsed together by :class:`transformers.HfArgumentParser`:

* :class:`ModelArguments`: which checkpoint to start from;
* :class:`DataArguments`: where the competition-layout data lives and how titles/images are prepared;
* :class:`LoraArguments`: the adapter (converted to :func:`cnclip_lora.apply_lora` keyword arguments);
* :class:`CnClipTrainingArguments`: every standard ``TrainingArguments`` flag, plus the few options
  this task adds. Defaults that differ from ``TrainingArguments`` are listed in its docstring; they
  are ordinary defaults, so a value the user sets always wins.

A YAML or JSON file can stand in for the flags (``cnclip-lora train recipe.yaml``); flags given
after it override the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from cnclip_lora.data.hf_source import DatasetOptions
from cnclip_lora.data.split import parse_val_size
from cnclip_lora.errors import ConfigError
from cnclip_lora.options import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_SIZE,
    Assign,
    Backend,
    CacheImages,
    FaissIndex,
    Flip,
    TitleNormalization,
    choices,
    parse_choice,
    parse_targets,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "Assign",
    "Backend",
    "CacheImages",
    "FaissIndex",
    "Flip",
    "TitleNormalization",
    "ModelArguments",
    "DataArguments",
    "LoraArguments",
    "CnClipTrainingArguments",
    "TRAIN_ARGUMENT_TYPES",
    "option_actions",
    "train_arguments",
    "typed_values",
    "train_argument_parser",
]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Base Chinese-CLIP checkpoint: a Hub id (e.g. "
            "OFA-Sys/chinese-clip-vit-huge-patch14) or a local folder."
        }
    )
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub branch, tag or commit of the base checkpoint."}
    )
    attn_implementation: str | None = field(
        default="sdpa",
        metadata={"help": "Attention kernel passed to from_pretrained: sdpa (default), eager, flash_attention_2."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with the checkpoint. Off unless you trust its author."}
    )


@dataclass
class DataArguments(DatasetOptions):
    data_dir: str = field(
        default="xfdata",
        metadata={
            "help": "Data folder: the competition layout (train.csv, image/, ...) or Chinese-CLIP's "
            "({split}_texts.jsonl + {split}_imgs.tsv, or its lmdb/)."
        },
    )
    val_size: float = field(
        default=DEFAULT_VAL_SIZE,
        metadata={
            "help": "Held-out share of training images (0<x<1) or a count of images "
            "(whole number >= 1); 0 disables validation."
        },
    )
    split_seed: int = field(
        default=DEFAULT_SPLIT_SEED, metadata={"help": "Seed of the deterministic train/validation split."}
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Skip unusable training rows (each is counted and reported) instead of stopping."},
    )
    check_images: bool = field(
        default=True, metadata={"help": "Decode every image once before training to catch corrupt files."}
    )
    max_length: int = field(
        default=DEFAULT_MAX_LENGTH,
        metadata={"help": f"Title length in tokens (the seed's {DEFAULT_MAX_LENGTH}); longer titles are truncated."},
    )
    pad_to_max_length: bool | None = field(
        default=None,
        metadata={
            "help": "Pad every title to --max_length (one static shape) instead of each batch to its longest title "
            "rounded up to a multiple of 8. Default (unset): on with --torch_compile on a GPU, where a static "
            "shape avoids recompiling per title length; off elsewhere, where padding is wasted work."
        },
    )
    flip: str = field(
        default=Flip.RANDOM,
        metadata={
            "help": "Horizontal flip of training images: 'random' (p=0.5 augmentation, no flip at retrieval, as "
            "the model was pretrained and is evaluated), 'none', or 'always' (the seed's recipe: retrieval then "
            "flips every gallery image too).",
            "choices": choices(Flip),
        },
    )
    title_normalization: str = field(
        default=TitleNormalization.OFFICIAL,
        metadata={
            "help": "How titles reach the tokenizer: 'official' (Chinese-CLIP's own text path: lower-case, curly "
            "double quotes to \", BERT tokenization; the ids the checkpoints were trained on) or 'nfkc' (also fold "
            "full-width letters, digits and punctuation to ASCII, control characters to spaces). Recorded with "
            "the adapter and replayed at retrieval.",
            "choices": choices(TitleNormalization),
        },
    )
    fast_decode: bool = field(
        default=False,
        metadata={
            "help": "Decode large JPEGs at 1/2-1/8 scale (PIL draft mode) before the resize: cheaper decoding, "
            "pixels that differ slightly from the official transform. Recorded and replayed at retrieval."
        },
    )
    cache_images: str = field(
        default=CacheImages.AUTO,
        metadata={
            "help": "Decode and resize each training image once into a uint8 Arrow cache (datasets.map) and reuse "
            "it in every epoch and run: 'auto' (when training sees images more than once and the cache fits "
            "--image_cache_max_gb), 'true', 'false' (decode per batch). See cnclip_lora.training.pixel_cache.",
            "choices": choices(CacheImages),
        },
    )
    image_cache_max_gb: float = field(default=20.0, metadata={"help": "Largest pixel cache 'auto' builds (GB)."})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the pixel cache; default: datasets' cache (HF_DATASETS_CACHE)/cnclip_lora/pixels."
        },
    )

    def __post_init__(self) -> None:
        self.cache_images = parse_choice(CacheImages, self.cache_images, "--cache_images")
        self.flip = parse_choice(Flip, self.flip, "--flip")
        self.title_normalization = parse_choice(TitleNormalization, self.title_normalization, "--title_normalization")
        if self.max_length < 2:
            raise ConfigError(f"--max_length must be at least 2 (CLS + SEP); got {self.max_length}.")
        parse_val_size(self.val_size)  # fail at parse time, with the data layer's own rule and message


@dataclass
class LoraArguments:
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (the seed used 64)."})
    lora_alpha: int = field(default=96, metadata={"help": "LoRA alpha (the seed used 96; scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    # A list from a YAML recipe or a Python call; a comma-separated string on the command line.
    lora_target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names or suffixes to adapt (a list in a recipe or in train()). Default: "
            "Q/K/V of every layer of both towers, derived from the loaded config. An entry that matches nothing "
            "is an error."
        },
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"--lora_r must be >= 1; got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora_dropout must be in [0, 1); got {self.lora_dropout}.")
        targets = self.lora_target_modules
        if isinstance(targets, (list, tuple)) and not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"--lora_target_modules must be module names; got {targets!r}.")
        if targets is not None and not isinstance(targets, (str, list, tuple)):
            raise ConfigError(f"--lora_target_modules must be a comma-separated string or a list; got {targets!r}.")

    def apply_lora_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`cnclip_lora.apply_lora`."""
        targets = parse_targets(self.lora_target_modules) or None  # an empty list is the default set too
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout, "targets": targets}


@dataclass
class CnClipTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the defaults this task needs.

    Changed defaults (override any of them on the command line):

    * ``remove_unused_columns=False``: the collator needs the raw ``title``/``path`` columns,
      which the model's forward signature does not name.
    * ``ddp_find_unused_parameters=False``: every LoRA parameter is used in every step; the search
      for unused ones only costs time (and errors with frozen base weights under PEFT).
    * ``dataloader_drop_last=True``: contrastive batches are compared across processes, so every
      process must hold the same number of rows; a short last batch would also weaken negatives.
    * ``activation_checkpointing_kwargs={"use_reentrant": False}`` (alias ``gradient_checkpointing_kwargs``):
      the re-entrant variant does not
      propagate gradients to LoRA weights when the inputs (frozen embeddings) need no grad.
    * ``logging_steps=10``, ``save_total_limit=2``, ``report_to="none"`` (pass ``tensorboard``,
      ``wandb``... to log).
    * ``dataloader_persistent_workers``: on whenever there are workers (unset = auto), so they are not
      re-forked each epoch and keep the collator's token memo.
    * ``accelerator_config={"non_blocking": True}`` (merged into a user's dict): batches reach the
      GPU by asynchronous copies from pinned memory instead of a copy that first waits for the
      previous step to finish.
    * ``logging_nan_inf_filter=False``: the Trainer's filter hides NaN/inf losses from the logs
      (with bf16/fp32 such a step writes NaN into the adapters: it must show; a warning names the
      step) and costs a GPU -> host sync on every step.
    * ``--torch_compile true`` compiles *regionally* (accelerate's ``compile_regions``): each
      tower's transformer layer is compiled once and reused for all its layers, so compilation
      takes about one layer's time instead of the whole two-tower graph's. Set
      ``ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION=false`` to compile the whole model instead.
    """

    output_dir: str | None = field(
        default="outputs/cnclip-lora", metadata={"help": "Where adapters and checkpoints go."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw title/path columns for the collator."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every LoRA weight is used each step."}
    )
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Equal contrastive batches on every process."})
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={"help": "Non-reentrant checkpointing so LoRA weights receive gradients."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={
            "help": "Keep DataLoader workers alive across epochs. Default (unset): on whenever "
            "--dataloader_num_workers > 0, so workers are not re-forked every epoch and keep the collator's "
            "title-token memo and open pixel cache."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Replace NaN/inf step losses by the running average in the logs. Off: a diverged step "
            "(whose NaN gradients then reach the LoRA weights) must show, and the filter reads the loss "
            "back from the GPU every step, stalling the next step's kernel launches."
        },
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    learning_rate: float = field(default=4e-5, metadata={"help": "AdamW learning rate (the seed used 4e-5)."})
    gather_loss: bool = field(
        default=True,
        metadata={
            "help": "Under several processes, gather embeddings so the contrastive loss sees the global batch "
            "(N processes x B behave like one batch of N*B). No effect in one process."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an --output_dir that holds another run's adapter or checkpoints, deleting "
            "them first (other files are kept). Without it such a folder is refused, so runs never mix."
        },
    )
    eval_max_queries: int | None = field(
        default=None, metadata={"help": "Evaluate on at most N held-out titles (all by default)."}
    )
    unique_images_per_batch: bool | None = field(
        default=None,
        metadata={
            "help": "Never put two captions of one image in the same (global) batch, where each would be the "
            "other's false negative. Default (unset): on when some image has several captions in train.csv; "
            "true/false force it. See cnclip_lora.training.sampler.UniqueImageSampler."
        },
    )

    contrastive_mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Cached-gradient contrastive step: embed each per-device batch in chunks of M rows, take the "
            "loss over the whole (gathered) batch, then backpropagate chunk by chunk. Activation memory follows "
            "M, negatives follow the per-device batch x processes; costs one extra forward pass. Unset: plain step. "
            "See README, 'Choosing the batch, the mini-batch and the learning rate'."
        },
    )

    def _check_values(self) -> None:
        """Refuse optimizer and batch values that cannot train, naming the option (before any loading)."""
        import math

        rules = [
            (
                "--learning_rate",
                self.learning_rate,
                math.isfinite(self.learning_rate) and self.learning_rate >= 0,
                "must be a finite number >= 0 (the seed used 4e-5)",
            ),
            (
                "--gradient_accumulation_steps",
                self.gradient_accumulation_steps,
                self.gradient_accumulation_steps >= 1,
                "must be >= 1 (1 = update after every batch)",
            ),
            (
                "--per_device_train_batch_size",
                self.per_device_train_batch_size,
                self.per_device_train_batch_size >= 1,
                "must be >= 1",
            ),
            (
                "--per_device_eval_batch_size",
                self.per_device_eval_batch_size,
                self.per_device_eval_batch_size >= 1,
                "must be >= 1",
            ),
            (
                "--num_train_epochs",
                self.num_train_epochs,
                math.isfinite(self.num_train_epochs) and self.num_train_epochs >= 0,
                "must be a finite number >= 0",
            ),
            (
                "--weight_decay",
                self.weight_decay,
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                "must be >= 0",
            ),
            ("--adam_epsilon", self.adam_epsilon, self.adam_epsilon > 0, "must be > 0"),
            ("--adam_beta1", self.adam_beta1, 0 <= self.adam_beta1 < 1, "must be in [0, 1)"),
            ("--adam_beta2", self.adam_beta2, 0 <= self.adam_beta2 < 1, "must be in [0, 1)"),
            ("--max_grad_norm", self.max_grad_norm, self.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)"),
        ]
        for flag, value, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{flag} {value} {rule}.")

    def __post_init__(self) -> None:
        self._check_values()
        m = self.contrastive_mini_batch_size
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(
                f"--contrastive_mini_batch_size must be a positive integer (rows per chunk), got {m!r}; "
                "leave it unset for the plain step."
            )
        _use_cpu_for_cpu_only_launch(self)
        _check_precision_fits_the_machine(self)
        if self.disable_tqdm is None and not _stderr_is_terminal():
            # Redirected output: one log line per --logging_steps instead of a bar's redraws.
            self.disable_tqdm = True
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        elif self.dataloader_persistent_workers and self.dataloader_num_workers == 0:
            # A recipe written for a GPU box (workers + persistent) run with --dataloader_num_workers 0:
            # there are no workers to keep, and torch's DataLoader would refuse the combination.
            logger.info("--dataloader_persistent_workers ignored: there are no workers (--dataloader_num_workers 0).")
            self.dataloader_persistent_workers = False
        # Asynchronous host -> device batch copies (from the pinned DataLoader memory) unless the
        # user's --accelerator_config says otherwise. A blocking copy waits for the GPU to finish
        # the previous step, so the next step's Python (the Trainer's walks over every module,
        # the forward's launches) then runs while the GPU idles.
        given = self.accelerator_config
        if isinstance(given, str) and given.lstrip().startswith("{"):  # JSON from the command line
            given = json.loads(given)
        chose_non_blocking = (given is None or isinstance(given, dict)) and "non_blocking" not in (given or {})
        if given is None or isinstance(given, dict):
            self.accelerator_config = {"non_blocking": True, **(given or {})}
        super().__post_init__()
        if chose_non_blocking and not self.dataloader_pin_memory:
            # --use_cpu turns pinning off: our default then does nothing but draw the Trainer's warning.
            self.accelerator_config.non_blocking = False
        _drop_missing_report_backends(self)
        if self.torch_compile:
            # Read by accelerate's TorchDynamoPlugin when the Trainer builds its Accelerator.
            os.environ.setdefault("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "true")


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("xpu", "mps", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None) or getattr(getattr(torch, "backends", None), name, None)
        try:
            if backend is not None and backend.is_available():
                return True
        except Exception:  # a backend stub that cannot answer counts as absent
            continue
    return False


def _stderr_is_terminal() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _check_precision_fits_the_machine(args: TrainingArguments) -> None:
    """``--bf16``/``--fp16`` on a machine without an accelerator: one line naming the option and the
    fix, before transformers' own multi-line refusal (or a model load)."""
    if not (args.bf16 or args.fp16) or _has_accelerator():
        return
    if args.fp16:
        raise ConfigError(
            "--fp16 true needs a GPU and this machine has none: drop --fp16 (float32 on the CPU), "
            "or run on a GPU machine."
        )
    if not args.use_cpu:
        raise ConfigError(
            "--bf16 true needs a GPU and this machine has none: drop --bf16 (float32 on the CPU), or add "
            "--use_cpu true to train in bfloat16 on the CPU (slower than float32 on most processors)."
        )


def _use_cpu_for_cpu_only_launch(args: TrainingArguments) -> None:
    """Under a multi-process launch (torchrun, accelerate) on a machine without accelerators,
    train across the processes on CPU with gloo, as accelerate's MULTI_CPU and plain DDP do.

    Without this the Trainer would find no backend and let every process train alone on all data.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.use_cpu and not _has_accelerator():
        logger.info(
            "launched as %d processes on a machine without GPUs: training across them on CPU "
            "with the gloo backend (same as --use_cpu true).",
            world,
        )
        args.use_cpu = True


def _drop_missing_report_backends(args: TrainingArguments) -> None:
    """Drop ``--report_to`` backends that are not installed, with one warning, at parse time.

    The Trainer would raise for them only when it is built, i.e. after the (possibly multi-GB)
    model was downloaded and loaded. Logging is optional: training proceeds without it.
    """
    from transformers.integrations import get_available_reporting_integrations

    requested = [r for r in (args.report_to or []) if r not in ("none", "all")]
    if not requested:
        return
    available = set(get_available_reporting_integrations())
    missing = [r for r in requested if r not in available]
    if missing:
        logger.warning(
            "--report_to %s: not installed (pip install %s), so training runs without it.",
            ",".join(missing),
            " ".join(missing),
        )
        kept = [r for r in args.report_to if r not in missing]
        args.report_to = kept  # [] = no logging backend (what "none" becomes after parsing)


TRAIN_ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraArguments, CnClipTrainingArguments)


def train_argument_parser(**kwargs: Any) -> HfArgumentParser:
    """The parser of every training option (``kwargs`` go to argparse: ``prog``, ``description``)."""
    # No abbreviations: a misspelt flag that happens to prefix a real one must not be taken silently.
    return HfArgumentParser(TRAIN_ARGUMENT_TYPES, allow_abbrev=False, **kwargs)


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option name (as a flag without dashes, either spelling) -> the action that stores it."""
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._StoreFalseAction):  # --no_X: the key X says it
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                names[flag[2:]] = action
    return names


def typed_values(values: Mapping[str, Any], options: dict[str, argparse.Action], source: str) -> dict[str, Any]:
    """``{option: value}`` with each value typed as the option's flag would be; ``None`` = the default.

    Real Python values (lists, dicts, bools, numbers) are kept as given, so a list of LoRA targets or
    an ``accelerator_config`` dict reach the dataclasses intact; strings are converted by the flag's
    own type (``"true"`` -> ``True``, ``"4e-5"`` -> ``4e-05``), as on the command line.

    Raises:
        ConfigError: An unknown option, a value of the wrong kind, or a value outside the option's choices.
    """
    typed: dict[str, Any] = {}
    for key, value in values.items():
        action = options.get(str(key))
        if action is None or action.dest == "help":
            import difflib

            close = difflib.get_close_matches(str(key), [o for o in options if "-" not in o], n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else " (see `cnclip-lora train --help`)."
            raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        if value is None:
            continue
        convert = action.type if callable(action.type) else None
        many = action.nargs in ("+", "*")
        try:
            if isinstance(value, str) and convert is not None:
                value = [convert(value)] if many else convert(value)
            elif isinstance(value, (list, tuple)) and many and convert is not None:
                value = [convert(v) if isinstance(v, str) else v for v in value]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"{source}: {key} {value!r}: {err}") from None
        if convert is string_to_bool and type(value) is int and value in (0, 1):
            value = bool(value)  # as the flag reads "1" / "0"
        items = value if many and isinstance(value, list) else [value]
        for item in items:
            _check_kind(item, convert, action.choices, f"{source}: {key}")
        if convert is float and not many:
            value = float(value)  # an int from YAML/Python for a float option, typed as the flag would be
        typed[action.dest] = value
    return typed


def _check_kind(value: Any, convert: Any, choices: Any, where: str) -> None:
    """A number for a number option, a bool for a bool option, one of the choices where there are some."""
    kinds = {int: (int,), float: (int, float), string_to_bool: (bool,)}.get(convert)
    if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise ConfigError(f"{where} must be {'true or false' if bool in kinds else 'a number'}; got {value!r}.")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} {value!r} is not one of {', '.join(map(str, choices))}.")


def train_arguments(
    options: Mapping[str, Any],
    *,
    source: str = "train()",
    parser: HfArgumentParser | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> tuple[ModelArguments, DataArguments, LoraArguments, CnClipTrainingArguments]:
    """The four training dataclasses from typed option values (``{"max_steps": 10, "bf16": True}``),
    over ``namespace`` (already parsed values, e.g. a command line's) and each option's default.

    Raises:
        ConfigError: an unknown option (with the closest known names), a value of the wrong kind, or
            a required option (``model_name_or_path``, ``output_dir``) missing.
    """
    parser = parser or train_argument_parser()
    given = typed_values(options, option_actions(parser), source=source)
    values: dict[str, Any] = {}
    for action in parser._actions:  # a --no_X action shares X's dest with the opposite default: skip it
        if (
            action.dest != "help"
            and action.default is not argparse.SUPPRESS
            and not isinstance(action, argparse._StoreFalseAction)
        ):
            values.setdefault(action.dest, action.default)
    values.update({k: v for k, v in (namespace or {}).items() if v is not None or k not in values})
    values.update(given)
    missing = [a.dest for a in parser._actions if a.required and values.get(a.dest) is None]
    if missing:
        raise ConfigError(f"{source}: missing required option(s): {', '.join(missing)}.")
    return tuple(parser.parse_dict(values))  # type: ignore[return-value]
