"""``CnClipLoraTrainer``: the Hugging Face Trainer with a contrastive loss and retrieval evaluation.

Only what differs from ``transformers.Trainer`` is overridden:

* ``compute_loss``: symmetric contrastive loss over the batch's text/image embeddings
  (:class:`cnclip_lora.training.loss.ContrastiveLoss`, gathered across processes), plus in-batch
  text-to-image accuracy, logged next to the loss.
* ``evaluation_loop`` / ``get_eval_dataloader``: the stock ``Trainer.evaluate`` runs; without an
  ``eval_dataset`` over an empty dataloader, and the :class:`cnclip_lora.inference.evaluator.RetrievalEvaluator`'s
  full-gallery Recall@1/5/10 and MR are merged into its result (as sentence-transformers' trainer
  does), so ``eval_runtime``, the ``on_evaluate`` callbacks, ``metric_for_best_model="eval_t2i_MR"``,
  ``load_best_model_at_end`` and ``EarlyStoppingCallback`` work unchanged.

Private hooks still overridden (each pinned by ``tests/training/test_trainer_hooks.py``, which fails
when transformers changes the method it replaces or extends, so the override is reviewed):

* ``_save``: extended, not replaced (staging, no pickled arguments, the record and card).
* ``_clip_grad_norm`` / ``_get_grad_norm``: the LoRA parameters only, found once; every
  branch of the Trainer's own body (SageMaker fp16, mixed meshes, sharded setups) is delegated to it.
* ``_get_train_sampler``: the unique-image sampler (see below), else the Trainer's own.
* ``_save``: PEFT adapter-only saving is the Trainer's own; this stages it so files appear
  atomically, swaps the pickled ``training_args.bin`` for ``training_args.json`` and writes the
  preprocessing record.
* ``floating_point_ops``: ``total_flos`` from :mod:`cnclip_lora.training.flops` (per tower, LoRA-aware),
  computed once per input shape instead of walking the model every step.
* ``training_step``: with ``--contrastive_mini_batch_size`` the cached-gradient step
  (:mod:`cnclip_lora.training.cached_step`); otherwise the Trainer's own.
* ``_get_train_sampler``: :class:`cnclip_lora.training.sampler.UniqueImageSampler` when an image has
  several captions (``--unique_images_per_batch``), so no batch holds an image twice.
* ``train``: ``--resume_from_checkpoint true`` resumes from the newest *complete* checkpoint.
* ``__init__``: a model an earlier Trainer already prepared is released first
  (:func:`release_accelerate_preparation`), so this Trainer's precision and compilation apply.
"""

from __future__ import annotations

import inspect
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from cnclip_lora.adapter.model_card import write_model_card
from cnclip_lora.adapter.record import Preprocessing, RunRecord
from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inference.evaluator import NonFiniteEmbeddingsError, RetrievalEvaluator
from cnclip_lora.training.flops import batch_shape_tokens, training_flops_per_sample
from cnclip_lora.training.loss import ContrastiveLoss
from cnclip_lora.training.sampler import unique_image_sampler_for
from cnclip_lora.utils.files import atomic_write_text, resolve_resume_checkpoint, staged_dir

__all__ = ["CnClipLoraTrainer", "release_accelerate_preparation"]

logger = logging.getLogger(__name__)

TRAINING_ARGS_PICKLE = "training_args.bin"
_EVALUATOR_ONLY = "evaluator"  # stands in for eval_dataset during Trainer.__init__'s argument checks only


def release_accelerate_preparation(model: torch.nn.Module | None) -> bool:
    """Undo what ``Accelerator.prepare`` left on ``model``; ``True`` if there was something.

    accelerate wraps a prepared model's ``forward`` in that run's autocast and marks the model so
    that every later ``prepare`` returns it untouched. A second Trainer on the same model object
    (a notebook re-run with other settings) would then silently keep the first run's precision
    (bf16 autocast in an fp32 run) and skip its own ``--torch_compile``.
    """
    if model is None or not getattr(model, "_is_accelerate_prepared", False):
        return False
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)  # restores the original forward
    model.__dict__.pop("_is_accelerate_prepared", None)
    return True


def _checkpoint_step(folder: str) -> Any:
    """The global step a checkpoint was saved at (its trainer_state.json), for the resume log line."""
    import json

    try:
        return json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return "unknown"


class LineProgressCallback(TrainerCallback):
    """Progress without a bar, for logs that go to a file: each training log as one line with its
    step (``step 20/510: {...}``). The final evaluation is printed by the caller, not here."""

    def __init__(self) -> None:
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training and state.is_world_process_zero and logs:
            print(f"step {state.global_step}/{state.max_steps}: {logs}", flush=True)


class CollatorEpochCallback(TrainerCallback):
    """Tell the collator each epoch before its batches are drawn, so its random flips are a function
    of ``(seed, epoch, row)``: a run resumed mid-epoch flips exactly as the uninterrupted one.
    (``on_epoch_begin`` runs before the epoch's DataLoader iterator, hence before any worker collates.)"""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the whole epoch at a boundary and epoch + fraction when resumed mid-epoch.
        self.collator.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)


class CnClipLoraTrainer(Trainer):
    """Trainer for Chinese-CLIP + LoRA on (title, image) pairs.

    Args:
        evaluator: scores the model at each evaluation (the held-out titles against their
            gallery); ``None`` disables retrieval evaluation.
        record: the run record written beside every saved adapter (``cnclip_lora.json``); its
            preprocessing is what evaluation replays and retrieval will replay. Default: a record
            with the default :class:`~cnclip_lora.adapter.record.Preprocessing` only.
        All other arguments are ``transformers.Trainer``'s.
    """

    def __init__(
        self,
        *args: Any,
        evaluator: RetrievalEvaluator | None = None,
        record: RunRecord | None = None,
        **kwargs: Any,
    ):
        model = kwargs.get("model", args[0] if args else None)
        if release_accelerate_preparation(model):
            logger.info(
                "The model was prepared by an earlier Trainer: released it so this run's "
                "precision and compilation settings apply."
            )
        # transformers refuses an eval_strategy without an eval_dataset; the evaluator is what is
        # evaluated here, so (like sentence-transformers) the check sees a marker, removed right after.
        given = inspect.signature(Trainer.__init__).bind_partial(self, *args, **kwargs).arguments
        evaluator_only = evaluator is not None and given.get("eval_dataset") is None
        if evaluator_only:
            kwargs["eval_dataset"] = _EVALUATOR_ONLY
        super().__init__(*args, **kwargs)
        if self.args.disable_tqdm:  # no bar (redirected output): one line per log while training
            from transformers.trainer_callback import PrinterCallback

            self.remove_callback(PrinterCallback)
            self.add_callback(LineProgressCallback())
        if callable(getattr(self.data_collator, "set_epoch", None)):
            self.add_callback(CollatorEpochCallback(self.data_collator))
        if evaluator_only:
            self.eval_dataset = None
        self.evaluator = evaluator
        self.record = record if record is not None else RunRecord()
        self.contrastive_loss = ContrastiveLoss(gather=getattr(self.args, "gather_loss", True))
        # Our loss is already a per-batch mean, so the Trainer must divide it by the
        # gradient-accumulation steps; ChineseCLIPModel.forward takes **kwargs, which would
        # otherwise make the Trainer believe the model normalises by num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        # [correct, total] since the last log, kept on the model's device: converting to Python
        # numbers every step would force a GPU sync and stall kernel launches.
        self._acc_counts: torch.Tensor | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """How this run prepares inputs (the record's), replayed by evaluation."""
        return self.record.preprocessing

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        # `--resume_from_checkpoint true` arrives as a string, and the Trainer's own lookup would
        # pick a checkpoint a killed process left half-written: resolve to a complete one here.
        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume is not None:
            logger.info("resuming from %s (step %s)", resume, _checkpoint_step(resume))
        return super().train(
            resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )

    def _get_train_sampler(self, train_dataset=None):
        # Two captions of one image in a batch are each other's false negatives (cnclip_lora.training.sampler).
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        mode = getattr(self.args, "unique_images_per_batch", None)
        if self.args.train_sampling_strategy != "random":
            if mode:
                raise ConfigError(
                    f"--unique_images_per_batch true needs --train_sampling_strategy random, "
                    f"got {self.args.train_sampling_strategy!r}; drop one of the two options."
                )
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        sampler = unique_image_sampler_for(
            dataset, batch_size=self._train_batch_size, world_size=self.args.world_size, seed=seed, mode=mode
        )
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Through the (possibly DDP-wrapped) model's forward, so gradient hooks fire.
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            token_type_ids=inputs.get("token_type_ids"),
            pixel_values=inputs["pixel_values"],
        )
        out = self.contrastive_loss(outputs.text_embeds, outputs.image_embeds, self._logit_scale(model))
        if model.training:
            step_counts = torch.stack([out.t2i_correct, out.total]).detach().to(torch.float64)
            self._acc_counts = step_counts if self._acc_counts is None else self._acc_counts + step_counts
        if return_outputs:
            return out.loss, {"text_embeds": outputs.text_embeds, "image_embeds": outputs.image_embeds}
        return out.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        mini_batch_size = getattr(self.args, "contrastive_mini_batch_size", None)
        if not mini_batch_size:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._cached_training_step(model, inputs, mini_batch_size)

    def _cached_training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], mini_batch_size: int
    ) -> torch.Tensor:
        """``training_step`` through :func:`cnclip_lora.training.cached_step.cached_contrastive_step`: the
        Trainer's scaling (accumulation steps, mixed precision via ``accelerator.backward``), once
        per accumulation step, each step one cached big batch."""
        import functools

        from cnclip_lora.training.cached_step import cached_contrastive_step

        if self.is_deepspeed_enabled:
            raise ConfigError(
                "--contrastive_mini_batch_size does not work with DeepSpeed (its engine owns the "
                "backward and gradient synchronisation); drop one of the two."
            )
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        steps = self.current_gradient_accumulation_steps
        out = cached_contrastive_step(
            model,
            inputs,
            self.contrastive_loss,
            self._logit_scale(model),
            mini_batch_size,
            backward=lambda surrogate: self.accelerator.backward(surrogate / steps),
            no_sync=functools.partial(self.accelerator.no_sync, model=model),
            autocast=self.compute_loss_context_manager,
        )
        step_counts = torch.stack([out.t2i_correct, out.total]).detach().to(torch.float64)
        self._acc_counts = step_counts if self._acc_counts is None else self._acc_counts + step_counts
        return out.loss / steps

    def _logit_scale(self, model: torch.nn.Module) -> torch.nn.Parameter:
        """The model's temperature parameter, looked up once per wrapped model: ``unwrap_model``
        walks every module, every step."""
        return self._once_per_model("logit_scale", model, lambda: self.accelerator.unwrap_model(model).logit_scale)

    def _once_per_model(self, name: str, model: torch.nn.Module, compute: Any) -> Any:
        """``compute()``, remembered until the Trainer hands over another model object (a
        checkpoint reload or a wrapper keeps the old value from being reused)."""
        cache = self.__dict__.setdefault("_per_model", {})
        if name not in cache or cache[name][0] is not model:
            cache[name] = (model, compute())
        return cache[name][1]

    def _clip_grad_norm(self, model: torch.nn.Module):
        """Clip over the trainable (LoRA) parameters only; the norm is the same.

        The default hands ``model.parameters()`` to accelerate, so every step walks all frozen
        weights of both towers to find the few with gradients.
        """
        params = self._trainable_parameters(model)
        if params is None:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm=None):
        # With --max_grad_norm 0 the Trainer still measures the norm for the logs: same walk.
        params = self._trainable_parameters(model) if grad_norm is None else None
        if params is not None:
            grad_norm = self.accelerator.clip_grad_norm_(params, float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter] | None:
        """The parameters with gradients, decided once per model (not every step); ``None`` for the
        setups the Trainer's own norm has branches for (FSDP, DeepSpeed, tensor parallel, SageMaker
        fp16, mixed device meshes): they compute it their way."""
        return self._once_per_model("trainable", model, lambda: self._own_norm_parameters(model))

    def _own_norm_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter] | None:
        from transformers.utils import is_sagemaker_mp_enabled

        sharded = getattr(self.accelerator, "parallelism_config", None) is not None
        if sharded or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return None
        mixed_mesh = getattr(self, "_has_mixed_mesh_grads", None)
        if (is_sagemaker_mp_enabled() and self.args.fp16) or (mixed_mesh is not None and mixed_mesh(model)):
            return None
        return [p for p in model.parameters() if p.requires_grad]

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Model FLOPs of this training batch (:mod:`cnclip_lora.training.flops`), for ``total_flos``.

        The Trainer's default multiplies the title length by every weight of both towers, ignores
        the images, and walks all modules on every step (~15 % of a small model's step time);
        this counts each tower with its own tokens and is computed once per input shape.
        """
        model = self.model  # the Trainer keeps the unwrapped model here
        config = getattr(model, "config", None)
        shape = batch_shape_tokens(inputs, config) if config is not None else None
        if shape is None:
            return 0
        batch, text_tokens, image_tokens = shape
        cache = self.__dict__.setdefault("_flops_per_sample", {})
        if (text_tokens, image_tokens) not in cache:
            cache[(text_tokens, image_tokens)] = training_flops_per_sample(model, config, text_tokens, image_tokens)[
                "total"
            ]
        return int(batch * cache[(text_tokens, image_tokens)])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            counts = self._acc_counts if self._acc_counts is not None else torch.zeros(2, dtype=torch.float64)
            counts = counts.to(self.args.device)
            if self.args.world_size > 1:
                # Summed counts, not averaged ratios: exact over the global batch. Entered on every
                # "loss" log whatever the local count, so all processes run the collective together.
                counts = self.accelerator.reduce(counts, reduction="sum")
            if counts[1] > 0:
                logs["t2i_acc"] = round(float(counts[0] / counts[1]), 4)
            self._acc_counts = None
            if not math.isfinite(logs["loss"]):
                logger.warning(
                    f"training loss is {logs['loss']} at step {self.state.global_step}: the run has diverged and "
                    "the adapters hold non-finite values from here on; lower --learning_rate or check the data."
                )
        super().log(logs, start_time)

    # ---------------------------------------------------------------- evaluation
    # Evaluation is the stock ``Trainer.evaluate``: without an eval_dataset it runs over an empty
    # dataloader (no loss, no batches), and evaluation_loop merges the evaluator's metrics, so
    # timing, logging, on_evaluate callbacks, memory metrics and best-model tracking are the Trainer's own.
    def get_eval_dataloader(self, eval_dataset=None):
        if eval_dataset is None and self.eval_dataset is None and self.evaluator is not None:
            from torch.utils.data import DataLoader

            return DataLoader([])
        return super().get_eval_dataloader(eval_dataset)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if self.evaluator is not None and len(self.evaluator):
            output.metrics.update(self.evaluator_metrics(metric_key_prefix))
            if (
                not output.num_samples
            ):  # evaluator only: its titles and images are the samples (eval_samples_per_second)
                output = output._replace(num_samples=len(self.evaluator) + len(self.evaluator.gallery_paths))
        return output

    def evaluator_metrics(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The evaluator's metrics of the current model, keyed ``{metric_key_prefix}_t2i_R@1`` and so on."""
        model = self.accelerator.unwrap_model(self.model)
        try:
            metrics = self.evaluator(model)
        except NonFiniteEmbeddingsError:
            raise CnClipLoraError(
                f"evaluation at step {self.state.global_step}: the model's embeddings contain NaN or infinite "
                "values, so training has diverged (the logged loss shows from which step); lower --learning_rate "
                "or check the data, and restart from a checkpoint before the divergence."
            ) from None
        prefix = f"{metric_key_prefix}_"
        return {key if key.startswith(prefix) else prefix + key: value for key, value in metrics.items()}

    # -------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            super()._save(output_dir, state_dict)
            return
        out = Path(output_dir or self.args.output_dir)
        # save_pretrained writes in place; staged, each finished file is renamed over its final
        # name, so a crash mid-save never leaves a truncated adapter behind.
        with staged_dir(out) as staging:
            if (out / "README.md").is_file():  # peft updates an existing card rather than replacing it
                shutil.copy2(out / "README.md", staging / "README.md")
            super()._save(str(staging), state_dict)
            # Only safetensors and JSON leave this package: drop the pickled arguments.
            (staging / TRAINING_ARGS_PICKLE).unlink(missing_ok=True)
        (out / TRAINING_ARGS_PICKLE).unlink(missing_ok=True)
        atomic_write_text(out / "training_args.json", self.args.to_json_string())
        self.record.save(out)
        write_model_card(out)  # every saved adapter (checkpoints too) carries the package's card, not peft's template
