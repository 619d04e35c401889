"""``train()``: data -> model -> LoRA -> CnClipLoraTrainer -> adapter folder.

The same function serves ``cnclip-lora train``, ``accelerate launch -m cnclip_lora train``,
``torchrun -m cnclip_lora train`` and notebooks::

    from cnclip_lora.training import train
    result = train(["--model_name_or_path", "tiny", "--data_dir", "xfdata", "--output_dir", "out",
                    "--max_steps", "50"])
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from cnclip_lora.adapter.record import DataSummary, LoraSummary, Preprocessing, RunRecord
from cnclip_lora.config import (
    CnClipTrainingArguments,
    DataArguments,
    LoraArguments,
    ModelArguments,
)
from cnclip_lora.data import CompetitionData, count_truncated, load_competition_data
from cnclip_lora.errors import ConfigError, DataError
from cnclip_lora.inference.evaluator import RetrievalEvaluator
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.modeling import apply_lora, count_lora_modules, load_model_and_processor
from cnclip_lora.options import CacheImages
from cnclip_lora.training.pixel_cache import build_pixel_cache, should_cache
from cnclip_lora.training.trainer import CnClipLoraTrainer
from cnclip_lora.utils.caches import usable_cache_dir

__all__ = ["TrainResult", "train", "val_evaluator", "run_training"]

from cnclip_lora.adapter.model_card import write_model_card
from cnclip_lora.utils.sources import check_source

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced: the adapter folder and its metrics."""

    output_dir: Path
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    pushed_to: str | None = None


def val_evaluator(
    data: CompetitionData, processor: Any, preprocessing: Preprocessing, **kwargs: Any
) -> RetrievalEvaluator:
    """The held-out titles against the validation gallery (held-out images + non-train images),
    the split ``cnclip-lora evaluate --split val`` scores (:func:`cnclip_lora.retrieve.run.labelled_split`).

    Args:
        kwargs: further :class:`RetrievalEvaluator` fields (batch size, title padding).
    """
    image_dir = Path(data.image_dir)
    return RetrievalEvaluator(
        titles=list(data.val["title"]),
        labels=data.val_labels(),
        gallery_paths=[str(image_dir / p) for p in data.val_gallery["path"]],
        processor=processor,
        preprocessing=preprocessing,
        **kwargs,
    )


def _check_launch(training_args: CnClipTrainingArguments) -> None:
    """Refuse launches that would quietly train something else than asked (README, "Scaling out").

    Raises:
        ConfigError: several launched processes that did not form one training group, or FSDP /
            DeepSpeed, which this trainer does not support.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        # Seen with torchrun on a machine without GPUs: each process would train alone on all the data.
        raise ConfigError(
            f"launched as {launched} processes, but the Trainer runs them as independent single processes; "
            "check that the launcher set MASTER_ADDR/MASTER_PORT/RANK/LOCAL_RANK."
        )
    # accelerate's single-process launcher (`accelerate launch --cpu --num_processes N` without
    # --multi_gpu/--mpirun) sets MASTER_ADDR only when more than one process was asked for, then starts one.
    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "accelerate launch was asked for several processes but started one (its CPU launcher runs a single "
            "process): use `torchrun --nproc_per_node N -m cnclip_lora train ...`, which trains across CPU "
            "processes, or drop --num_processes."
        )
    # `accelerate launch` with an FSDP/DeepSpeed config announces it through these variables.
    engine_env = [
        v for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED") if os.environ.get(v, "").lower() == "true"
    ]
    if training_args.fsdp or training_args.deepspeed or engine_env:
        raise ConfigError(
            "FSDP and DeepSpeed are not supported: with LoRA the base model is frozen, so sharding saves little "
            "memory, and the trainer reads logit_scale and embeds the evaluation gallery outside the wrapped "
            "forward, where these engines hold only shards of the weights. Use DDP (torchrun or accelerate launch "
            "--multi_gpu) with --activation_checkpointing true and --bf16 true instead."
        )


def check_output_path(output_dir: str | os.PathLike | None) -> None:
    """Refuse an ``--output_dir`` that is a file or lies under one, before any loading.

    Raises:
        ConfigError: Naming the option and the file in the way.
    """
    if not output_dir:
        raise ConfigError("--output_dir is empty; give the folder the adapter is saved in.")
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
                raise ConfigError(f"--output_dir {output_dir} {where}; give a folder path.")
            return


def check_max_length(model_args: ModelArguments, max_length: int) -> None:
    """``--max_length`` must fit the text tower's position table; read from config.json only.

    A config that cannot be read is left to the model loader, which reports it.

    Raises:
        ConfigError: The title length exceeds the model's position count.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except Exception:  # noqa: BLE001 - reported by load_model_and_processor with its own message
        return
    text_config = getattr(config, "text_config", config)
    limit = getattr(text_config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigError(
            f"--max_length {max_length} is above the {limit} positions of {model_args.model_name_or_path}'s text "
            f"tower; use --max_length {limit} or less (the seed used 52)."
        )


def check_steps(training_args: CnClipTrainingArguments, n_train: int) -> None:
    """A run that would train zero optimizer steps is an error, not a success.

    Raises:
        ConfigError: The global batch is larger than the training set while the last short batch
            is dropped, or the planned epochs and steps are zero.
    """
    per_step = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    batches = n_train // per_step if training_args.dataloader_drop_last else math.ceil(n_train / per_step)
    if batches == 0:
        raise ConfigError(
            f"--per_device_train_batch_size {training_args.per_device_train_batch_size} x "
            f"{max(training_args.world_size, 1)} process(es) = {per_step} rows per "
            f"batch, but there are only {n_train} "
            "training pairs and --dataloader_drop_last drops the short batch: zero steps would be trained. "
            "Use a smaller batch size (or --dataloader_drop_last false)."
        )
    if training_args.max_steps <= 0 and training_args.num_train_epochs * batches < 1:
        raise ConfigError(
            f"--num_train_epochs {training_args.num_train_epochs} trains zero steps; give a positive number of "
            "epochs or --max_steps."
        )


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: CnClipTrainingArguments,
) -> TrainResult:
    """Run one training job from parsed arguments (see :func:`train` for the Python form).

    The stages, each its own function: every check that needs no model (paths, output folder,
    data), the model with verified adapters and the run record, the Trainer, then training,
    saving, the final evaluation and the Hub push.
    """
    resume = _check_before_loading(model_args, data_args, lora_args, training_args)
    data = _load_data(data_args, training_args, model_args)
    # Seeded first: LoRA draws its A matrices from the global RNG, and the Trainer seeds only
    # after they exist, so the initial adapter would depend on whatever ran before.
    set_seed(training_args.seed)
    model, processor, record = _model_and_record(model_args, data_args, lora_args, training_args, data, resume)
    # Hub pushes are ours, not the Trainer's: it would upload the whole folder (checkpoints,
    # pickled arguments) at every save; we upload the adapter set once at the end.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    trainer, evaluator = _build_trainer(model, processor, record, data, data_args, training_args)
    # LoRA's B matrices start at zero, so the model is still the base: its score is the zero-shot one.
    zero_shot = evaluator(model).get(f"{evaluator.prefix}t2i_MR") if evaluator is not None and not resume else None
    if training_args.overwrite_output_dir and training_args.process_index == 0:
        from cnclip_lora.training.output_dir import remove_previous_run

        remove_previous_run(training_args.output_dir)  # only now that the new run has passed its checks
    train_output = _train_or_explain_interrupt(trainer, resume, training_args.output_dir)
    trainer.save_model()
    train_metrics = dict(train_output.metrics)
    train_metrics["train_samples"] = len(data.train)
    # Saved, not printed: the Trainer logs the train summary once and the CLI prints the eval metrics.
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    eval_metrics: dict[str, float] = {}
    if evaluator is not None:
        eval_metrics = trainer.evaluate()
        trainer.save_metrics("eval", eval_metrics)
        if trainer.is_world_process_zero():
            _say_if_nothing_was_learned(zero_shot, eval_metrics.get("eval_t2i_MR"), training_args)
    if trainer.is_world_process_zero():
        # The package's own card (adapter, preprocessing, data, metrics) instead of peft's empty template.
        write_model_card(training_args.output_dir)
    pushed_to = _push(training_args) if push and trainer.is_world_process_zero() else None
    return TrainResult(Path(training_args.output_dir), train_metrics, eval_metrics, pushed_to)


def _say_if_nothing_was_learned(
    zero_shot: float | None, tuned: float | None, training_args: CnClipTrainingArguments
) -> None:
    """A warning when the adapter ends no better than the base on the held-out split, with the usual causes."""
    if zero_shot is None or tuned is None or tuned > zero_shot:
        return
    logger.warning(
        "held-out t2i MR %.1f after training is no better than the base model's %.1f: nothing was learned. "
        "Usual causes: a learning rate for another model size (--learning_rate %g; a random or tiny model needs "
        "about 1e-3, a pretrained checkpoint 1e-5 to 1e-4), too few epochs or steps, or a batch too small for "
        "in-batch negatives (--per_device_train_batch_size %d). examples/tiny-cpu.yaml is a recipe that learns "
        "on the tiny model.",
        tuned,
        zero_shot,
        training_args.learning_rate,
        training_args.per_device_train_batch_size,
    )


def _check_before_loading(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: CnClipTrainingArguments,
) -> str | None:
    """Launch, model path and output folder checks; returns the checkpoint to resume from, if any.

    A mistyped model path fails now, before seconds of data checks, and never as a Hub error; the
    output folder never mixes this run with another one's adapter and checkpoints.
    """
    _check_launch(training_args)
    check_source(model_args.model_name_or_path, option="--model_name_or_path", revision=model_args.model_revision)
    check_output_path(training_args.output_dir)
    from cnclip_lora.training.output_dir import check_output_dir, requested_settings
    from cnclip_lora.utils.files import resolve_resume_checkpoint

    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(
        training_args.output_dir,
        requested_settings(model_args, data_args, lora_args),
        resume=resume,
        overwrite=training_args.overwrite_output_dir,
    )
    return resume


def _load_data(
    data_args: DataArguments, training_args: CnClipTrainingArguments, model_args: ModelArguments
) -> CompetitionData:
    """The data, checked: every input problem is reported before a model is loaded."""
    from cnclip_lora.data.hf_source import dataset_source

    data = load_competition_data(
        data_args.data_dir,
        val_size=data_args.val_size,
        seed=data_args.split_seed,
        skip_bad_rows=data_args.skip_bad_rows,
        check_images=data_args.check_images,
        require_queries=False,
        use_answers=False,  # training never scores the test queries
        dataset=dataset_source(data_args),
    )
    logger.info("data:\n%s", data.report.summary())
    data.warn_left_out()
    if len(data.train) == 0:
        raise DataError(f"{data.root}/train.csv: no usable training pairs.")
    check_steps(training_args, len(data.train))
    check_max_length(model_args, data_args.max_length)
    return data


def _model_and_record(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: CnClipTrainingArguments,
    data: CompetitionData,
    resume: str | None,
) -> tuple[Any, Any, RunRecord]:
    """The base with verified LoRA adapters, its processor, and the run record saved beside every adapter."""
    from cnclip_lora.adapter.base_identity import base_identity
    from cnclip_lora.adapter.split_record import split_record

    model, processor = load_model_and_processor(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
        # Under --bf16 the frozen base weights are stored in bf16 (peft keeps the LoRA weights in
        # float32 for the optimizer): half the weight memory, and autocast no longer re-casts ~1 B
        # frozen weights every step. The GPU benchmark measures exactly this setup.
        dtype=torch.bfloat16 if training_args.bf16 else None,
    )
    data.report.truncated_titles = count_truncated(
        data.train["title"],
        processor.tokenizer,
        data_args.max_length,
        title_normalization=data_args.title_normalization,
    )
    if data.report.truncated_titles:
        logger.info(
            "%d of %d training titles are longer than --max_length %d tokens and are truncated",
            data.report.truncated_titles,
            len(data.train),
            data_args.max_length,
        )
    # Before LoRA: the identity of the base itself, checked wherever the adapter is loaded.
    identity = base_identity(model, processor.tokenizer, model_args.model_name_or_path, model_args.model_revision)
    if resume is not None:  # the architecture was compared up front; the weights need the loaded model
        from cnclip_lora.adapter.base_identity import check_base_identity, recorded_base_identity

        check_base_identity(recorded_base_identity(resume), identity, adapter=resume)
    lora_kwargs = lora_args.apply_lora_kwargs()
    model = apply_lora(model, **lora_kwargs)
    record = RunRecord(
        preprocessing=Preprocessing(
            max_length=data_args.max_length,
            train_flip=data_args.flip,
            draft=data_args.fast_decode,
            title_normalization=data_args.title_normalization,
        ),
        base_model=model_args.model_name_or_path,
        base_identity=identity,
        data=DataSummary(
            data_dir=str(data_args.dataset_name or data_args.data_dir),
            layout=data.report.layout,
            n_train=len(data.train),
            n_val=len(data.val),
            val_gallery_size=len(data.val_gallery),
            skipped_rows=data.report.skipped_rows,
            truncated_titles=data.report.truncated_titles,
        ),
        # The split, so `evaluate --split val` scores the same held-out images (cnclip_lora.adapter.split_record).
        split=split_record(data_args.val_size, data_args.split_seed, data.held_out_images()),
        lora=LoraSummary(
            r=lora_args.lora_r,
            alpha=lora_args.lora_alpha,
            dropout=lora_args.lora_dropout,
            targets=lora_kwargs["targets"] or "default: Q/K/V of both towers",
            adapted_modules=count_lora_modules(model),
        ),
    )
    return model, processor, record


def _build_trainer(
    model: Any,
    processor: Any,
    record: RunRecord,
    data: CompetitionData,
    data_args: DataArguments,
    training_args: CnClipTrainingArguments,
) -> tuple[CnClipLoraTrainer, RetrievalEvaluator | None]:
    """The Trainer with the collator, the held-out evaluator and the pixel caches."""
    preprocessing = record.preprocessing
    pad_to_max_length = static_title_padding(data_args.pad_to_max_length, training_args)
    record.data.title_padding = "max_length" if pad_to_max_length else "longest, multiple of 8"
    evaluator = None
    if len(data.val):
        # The training batches' padding rule: a compiled model keeps its static shape.
        evaluator = val_evaluator(
            data,
            processor,
            preprocessing,
            batch_size=training_args.per_device_eval_batch_size,
            pad_to_max_length=pad_to_max_length,
        ).first(training_args.eval_max_queries)
    elif training_args.eval_strategy != "no":
        logger.warning(
            "--eval_strategy %s but --val_size 0: there is nothing to evaluate on.", training_args.eval_strategy
        )
    pixel_cache, eval_pixel_cache = _pixel_caches(data, evaluator, data_args, training_args, processor)
    record.data.pixel_cache = pixel_cache is not None
    if evaluator is not None:
        evaluator.pixel_cache = eval_pixel_cache
    trainer = CnClipLoraTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        data_collator=ImageTextCollator(
            processor,
            data.image_dir,
            max_length=data_args.max_length,
            flip=data_args.flip,
            pixel_cache=pixel_cache,
            draft=data_args.fast_decode,
            title_normalization=data_args.title_normalization,
            pad_to_max_length=pad_to_max_length,
            flip_seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        ),
        processing_class=processor,
        evaluator=evaluator,
        record=record,
    )
    return trainer, evaluator


def _train_or_explain_interrupt(trainer: CnClipLoraTrainer, resume: str | None, output_dir: str) -> Any:
    """``trainer.train``; on Ctrl-C, the progress bar's line ended and a message that says how to
    resume; on a full disk (whatever library hit it), the incomplete checkpoint removed and one line."""
    try:
        return trainer.train(resume_from_checkpoint=resume)
    except Exception as err:
        from cnclip_lora.errors import CnClipLoraError
        from cnclip_lora.training.output_dir import resume_hint
        from cnclip_lora.utils.files import disk_errno, remove_incomplete_checkpoints, write_error_message

        remove_incomplete_checkpoints(output_dir)  # a failed save's folder never looks like a checkpoint
        if isinstance(err, CnClipLoraError) or (code := disk_errno(err, output_dir)) is None:
            raise
        raise CnClipLoraError(
            write_error_message(
                Path(output_dir),
                OSError(code, os.strerror(code)),
                after=f"the unfinished save removed; {resume_hint(output_dir).rstrip('.')}",
            )
        ) from None
    except KeyboardInterrupt:
        from transformers.trainer_callback import ProgressCallback

        from cnclip_lora.errors import TrainingInterrupted
        from cnclip_lora.training.output_dir import resume_hint

        for callback in trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None) if isinstance(callback, ProgressCallback) else None
            if bar is not None:
                bar.close()
        raise TrainingInterrupted(
            f"training stopped at step {trainer.state.global_step}; {resume_hint(output_dir)}"
        ) from None


def _push(training_args: CnClipTrainingArguments) -> str:
    """Upload the adapter set once, at the end (the Trainer's own push is turned off)."""
    from cnclip_lora.adapter.hub import push_adapter

    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    return push_adapter(
        training_args.output_dir,
        repo_id,
        private=bool(training_args.hub_private_repo),
        token=training_args.hub_token,
        revision=training_args.hub_revision,
    )


def planned_epochs(training_args: CnClipTrainingArguments, n_train: int) -> float:
    """How many times training will read each row (``--max_steps`` wins over ``--num_train_epochs``)."""
    if training_args.max_steps and training_args.max_steps > 0:
        per_step = (
            training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps
        )
        return training_args.max_steps * per_step / max(n_train, 1)
    return float(training_args.num_train_epochs)


def _pixel_caches(
    data: CompetitionData,
    evaluator: RetrievalEvaluator | None,
    data_args: DataArguments,
    training_args: CnClipTrainingArguments,
    processor: Any,
) -> tuple[Any, Any]:
    """``(training images, validation gallery)`` decoded-once pixel caches, each ``None`` when off.

    The training cache follows ``--cache_images`` (the decision is logged). With it on and an
    ``--eval_strategy``, the validation gallery, embedded at every evaluation, is cached too.
    The main process decodes; the others then load the same files by their fingerprints.
    """
    paths = list(data.train["path"])
    use, why = should_cache(
        data_args.cache_images,
        n_images=len(set(paths)),
        image_processor=processor.image_processor,
        epochs=planned_epochs(training_args, len(paths)),
        max_gb=data_args.image_cache_max_gb,
    )
    if use:
        cache_dir = usable_cache_dir(
            data_args.cache_dir, "pixels", required=data_args.cache_images == CacheImages.TRUE
        )
        if cache_dir is None:
            use, why = False, f"{why}, but its folder cannot be written (warning above)"
    logger.info("pixel cache %s: %s", "on" if use else "off", why)
    if not use:
        return None, None
    with training_args.main_process_first(desc="pixel cache"):
        train_cache = build_pixel_cache(
            data.image_dir, paths, processor.image_processor, cache_dir=cache_dir, draft=data_args.fast_decode
        )
        eval_cache = None
        if evaluator is not None and training_args.eval_strategy != "no":
            # Gallery paths already include the image folder: keyed as given, relative to ".".
            eval_cache = build_pixel_cache(
                ".",
                evaluator.gallery_paths,
                processor.image_processor,
                cache_dir=cache_dir,
                draft=data_args.fast_decode,
            )
    return train_cache, eval_cache


def static_title_padding(requested: bool | None, training_args: Any) -> bool:
    """``--pad_to_max_length``, or when unset: on exactly for ``--torch_compile`` on a GPU.

    A compiled graph specialises on the sequence length (each new width is a recompilation, and
    padding masks out the extra positions anyway); eager runs and CPUs only lose work to padding.
    """
    if requested is not None:
        return bool(requested)
    on_gpu = torch.cuda.is_available() and not getattr(training_args, "use_cpu", False)
    return bool(getattr(training_args, "torch_compile", False)) and on_gpu


def run_launched(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: CnClipTrainingArguments,
) -> TrainResult:
    """:func:`run_training`, with a process group a launcher made this process join torn down after."""
    from cnclip_lora.utils.distributed import adopt_new_process_group, group_exists

    existed = group_exists()
    try:
        return run_training(model_args, data_args, lora_args, training_args)
    finally:
        adopt_new_process_group(existed)  # a group the launch made us join is destroyed at exit


def train(**options: Any) -> TrainResult:
    """Train from options given as Python values, each option's default for the rest:
    ``train(model_name_or_path=M, data_dir=D, output_dir=O, max_steps=10, bf16=True,
    lora_target_modules=["query", "value"], accelerator_config={"split_batches": True})``.

    Every ``cnclip-lora train`` flag is an option; a misspelt one is refused with the closest names.
    """
    from cnclip_lora.config import train_arguments

    return run_launched(*train_arguments(options))
