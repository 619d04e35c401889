"""``CnClipLoraTrainer``: the Hugging Face Trainer with a contrastive loss and retrieval evaluation.

Only what differs from ``transformers.Trainer`` is overridden:

* ``compute_loss``: symmetric contrastive loss over the batch's text/image embeddings
  (:class:`cnclip_lora.loss.ContrastiveLoss`, gathered across processes), plus in-batch
  text-to-image accuracy, logged next to the loss.
* ``evaluate``: full-gallery Recall@1/5/10 and MR on the held-out split with the competition's
  gallery protocol. Like sentence-transformers' trainer, it returns ``eval_*`` metrics through the
  normal callback path, so ``metric_for_best_model="eval_t2i_MR"``, ``load_best_model_at_end`` and
  ``EarlyStoppingCallback`` work unchanged.
* ``_save``: PEFT adapter-only saving is the Trainer's own; this only swaps the pickled
  ``training_args.bin`` for ``training_args.json`` and writes the preprocessing record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from cnclip_lora.collate import Preprocessing, write_record
from cnclip_lora.embedding import embed_images, embed_texts
from cnclip_lora.io_utils import atomic_write_text
from cnclip_lora.loss import ContrastiveLoss
from cnclip_lora.metrics import RetrievalRecall
from cnclip_lora.ranking import rank

__all__ = ["RetrievalEvalSet", "CnClipLoraTrainer"]

TRAINING_ARGS_PICKLE = "training_args.bin"


@dataclass
class RetrievalEvalSet:
    """A labelled retrieval task: ``titles[i]``'s image is ``gallery_paths[labels[i]]``."""

    titles: list[str]
    labels: list[int]
    gallery_paths: list[str]

    def __len__(self) -> int:
        return len(self.titles)


class CnClipLoraTrainer(Trainer):
    """Trainer for Chinese-CLIP + LoRA on (title, image) pairs.

    Args:
        retrieval_eval: the held-out titles and their gallery (absolute image paths); ``None``
            disables retrieval evaluation.
        preprocessing: recorded in the output folder so retrieval replays it.
        record: extra sections for ``cnclip_lora.json`` (data description, LoRA settings).
        All other arguments are ``transformers.Trainer``'s.
    """

    def __init__(
        self,
        *args: Any,
        retrieval_eval: RetrievalEvalSet | None = None,
        preprocessing: Preprocessing | None = None,
        record: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.retrieval_eval = retrieval_eval
        self.preprocessing = preprocessing or Preprocessing()
        self.record = record or {}
        self.contrastive_loss = ContrastiveLoss(gather=getattr(self.args, "gather_loss", True))
        # Our loss is already a per-batch mean, so the Trainer must divide it by the
        # gradient-accumulation steps; ChineseCLIPModel.forward takes **kwargs, which would
        # otherwise make the Trainer believe the model normalises by num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        self._acc_counts = torch.zeros(2, dtype=torch.float64)  # [correct, total] since last log

    # ------------------------------------------------------------------ training
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Through the (possibly DDP-wrapped) model's forward, so gradient hooks fire.
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            token_type_ids=inputs.get("token_type_ids"),
            pixel_values=inputs["pixel_values"],
        )
        logit_scale = self.accelerator.unwrap_model(model).logit_scale
        out = self.contrastive_loss(outputs.text_embeds, outputs.image_embeds, logit_scale)
        if model.training:
            self._acc_counts += torch.tensor([float(out.t2i_correct), float(out.total)], dtype=torch.float64)
        if return_outputs:
            return out.loss, {"text_embeds": outputs.text_embeds, "image_embeds": outputs.image_embeds}
        return out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._acc_counts[1] > 0:
            counts = self._acc_counts.to(self.args.device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            logs["t2i_acc"] = round(float(counts[0] / counts[1]), 4)
            self._acc_counts.zero_()
        super().log(logs, start_time)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.retrieval_eval is None or len(self.retrieval_eval) == 0:
            return {}
        metrics = self.retrieval_metrics(self.retrieval_eval, metric_key_prefix=metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def retrieval_metrics(self, eval_set: RetrievalEvalSet, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Text-to-image Recall@1/5/10 + MR of the current model over ``eval_set``'s gallery."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        batch_size = self.args.per_device_eval_batch_size
        tokenizer = self.processing_class.tokenizer
        image_processor = self.processing_class.image_processor
        try:
            text = embed_texts(model, tokenizer, eval_set.titles, max_length=self.preprocessing.max_length,
                               batch_size=batch_size)
            images = embed_images(model, image_processor, eval_set.gallery_paths,
                                  preprocessing=self.preprocessing, batch_size=batch_size)
        finally:
            model.train(was_training)
        _, indices = rank(text, images, k=10)
        scores = RetrievalRecall().compute(predictions=indices.tolist(), references=[[l] for l in eval_set.labels])
        metrics = {f"{metric_key_prefix}_t2i_{k}": round(float(v), 4) for k, v in scores.items()}
        metrics[f"{metric_key_prefix}_gallery_size"] = len(eval_set.gallery_paths)
        metrics[f"{metric_key_prefix}_queries"] = len(eval_set.titles)
        return metrics

    # -------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        # Only safetensors and JSON leave this package: replace the pickled arguments.
        pickle_path = out / TRAINING_ARGS_PICKLE
        if pickle_path.exists():
            pickle_path.unlink()
        atomic_write_text(out / "training_args.json", self.args.to_json_string())
        write_record(out, self.preprocessing, **self.record)
