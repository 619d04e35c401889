"""``RetrievalEvaluator``: one labelled retrieval task, scored the same way everywhere.

In the pattern of sentence-transformers' ``InformationRetrievalEvaluator``: built once from the
queries (titles), their labels, the gallery and the recorded preprocessing; called with a model, it
embeds both sides and returns prefixed metrics. The Trainer's evaluation
(:class:`cnclip_lora.training.trainer.CnClipLoraTrainer`), ``cnclip-lora evaluate``
(:func:`cnclip_lora.retrieve.run.evaluate_retrieval`) and the HTML report all use this object, so a
number means the same in each of them::

    evaluator = RetrievalEvaluator(titles, labels, gallery_paths, processor, preprocessing, name="val")
    metrics = evaluator(model)   # {"val_t2i_R@1": ..., "val_i2t_MR": ..., "val_gallery_size": ..., ...}

The model is a :class:`cnclip_lora.inference.model.RetrievalModel` (which embeds through its own
cache) or a bare model being trained, which is wrapped with this evaluator's processor and
preprocessing. Recall comes from the exact full-gallery ranks (:mod:`cnclip_lora.inference.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cnclip_lora.adapter.record import Preprocessing
from cnclip_lora.errors import CnClipLoraError, ConfigError

if TYPE_CHECKING:
    from cnclip_lora.inference.model import RetrievalModel

__all__ = ["RetrievalEvaluator", "NonFiniteEmbeddingsError", "prefixed_recall"]

DEFAULT_KS = (1, 5, 10)


class NonFiniteEmbeddingsError(CnClipLoraError):
    """The model produced NaN or infinite embeddings (a diverged training run)."""


def prefixed_recall(ranks: np.ndarray, prefix: str, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``{f"{prefix}R@K": ..., f"{prefix}MR": ...}`` (percent, 4 decimals) of full-gallery ranks
    (:func:`cnclip_lora.inference.metrics.true_ranks`), so the Trainer, ``evaluate``, ``retrieve`` and
    the report count a hit the same way."""
    from cnclip_lora.inference.metrics import recall_from_ranks

    return {f"{prefix}{name}": round(float(value), 4) for name, value in recall_from_ranks(ranks, ks).items()}


@dataclass
class RetrievalEvaluator:
    """Text-to-image and image-to-text Recall@K + MR of a model on a labelled gallery.

    Args:
        titles: the queries.
        labels: ``labels[i]`` is the index in ``gallery_paths`` of ``titles[i]``'s image, or a list of
            them when a title has several relevant images (a hit when any is ranked; an empty list
            is a miss), as the official ``cn_clip/eval/evaluation.py`` counts.
        gallery_paths: image files, in gallery order.
        processor: the ``ChineseCLIPProcessor`` a bare model (one being trained) is wrapped with; a
            :class:`~cnclip_lora.inference.model.RetrievalModel` brings its own.
        preprocessing: the recorded preprocessing a bare model is wrapped with.
        name: key prefix (``"val"`` gives ``val_t2i_R@1``); empty for bare keys. The Trainer adds its
            own ``eval_`` prefix.
        batch_size: embedding batch size.
        pad_to_max_length: pad every title batch to ``max_length`` (a compiled model's static shape).
        pixel_cache: a :class:`cnclip_lora.training.pixel_cache.PixelCache` holding ``gallery_paths``
            (repeated evaluations during training then decode each image once).
        ks: recall cut-offs.
        i2t: also score image-to-text (each captioned image against all titles).
    """

    titles: list[str]
    labels: list[int] | list[list[int]]
    gallery_paths: list[str]
    processor: Any = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    name: str = ""
    batch_size: int = 64
    pad_to_max_length: bool = False
    pixel_cache: Any = None
    ks: tuple[int, ...] = DEFAULT_KS
    i2t: bool = True

    #: the metric to select models by (``metric_for_best_model``), without the name prefix
    primary_metric = "t2i_MR"

    def __post_init__(self) -> None:
        self.titles, self.gallery_paths = list(self.titles), [str(p) for p in self.gallery_paths]
        self.labels = [
            int(x) if isinstance(x, (int, np.integer)) else sorted({int(i) for i in x}) for x in self.labels
        ]
        if len(self.labels) != len(self.titles):
            raise ConfigError(f"RetrievalEvaluator: {len(self.labels)} labels for {len(self.titles)} titles.")
        bad = [x for x in self.positives() for x in x if not 0 <= x < len(self.gallery_paths)]
        if bad:
            raise ConfigError(
                f"RetrievalEvaluator: label {bad[0]} is outside the gallery of {len(self.gallery_paths)} images."
            )
        self.ks = tuple(self.ks)

    def __len__(self) -> int:
        return len(self.titles)

    def positives(self) -> list[list[int]]:
        """Each title's relevant gallery indices (one for a plain label)."""
        from cnclip_lora.inference.metrics import positive_list

        return [positive_list(x) for x in self.labels]

    @property
    def prefix(self) -> str:
        return f"{self.name}_" if self.name else ""

    def first(self, n: int | None) -> RetrievalEvaluator:
        """The same task with only the first ``n`` queries (all of them for ``None``); same gallery."""
        if n is None or n >= len(self):
            return self
        return replace(self, titles=self.titles[:n], labels=self.labels[:n])

    def __call__(self, model: Any) -> dict[str, float]:
        """Embed the titles and the gallery with ``model`` and score them (:meth:`score`)."""
        queries, gallery = self.embed(model)
        return self.score(queries, gallery)

    def encoder(self, model: Any) -> RetrievalModel:
        """``model`` as a :class:`RetrievalModel`: as it is, or a bare model wrapped (no cache: its
        weights change between evaluations)."""
        from cnclip_lora.inference.model import RetrievalModel

        if isinstance(model, RetrievalModel):
            return model
        if self.processor is None:
            raise ConfigError("RetrievalEvaluator: a bare model needs the evaluator's `processor`.")
        return RetrievalModel(model, self.processor, self.preprocessing, batch_size=self.batch_size)

    def embed(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(title embeddings [Q, D], gallery embeddings [G, D])``, L2-normalised; the model's
        train/eval mode is restored afterwards."""
        encoder = self.encoder(model)
        was_training = bool(getattr(encoder.model, "training", False))
        try:
            gallery = encoder.encode_images(
                self.gallery_paths, batch_size=self.batch_size, pixel_cache=self.pixel_cache
            )
            queries = encoder.encode_texts(
                self.titles, batch_size=self.batch_size, pad_to_max_length=self.pad_to_max_length
            )
        finally:
            if was_training:
                encoder.model.train()
        return queries, gallery

    def true_ranks(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """1-based full-gallery rank of each title's image (ties against it)."""
        from cnclip_lora.inference.metrics import true_ranks

        return true_ranks(queries, gallery, self.labels)

    def score(self, queries: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
        """Prefixed ``t2i_R@K``/``t2i_MR`` (and ``i2t_*``), ``gallery_size`` and ``queries`` of embeddings.

        Raises:
            NonFiniteEmbeddingsError: an embedding holds NaN or infinite values.
        """
        from cnclip_lora.inference.metrics import true_ranks

        if not (np.isfinite(queries).all() and np.isfinite(gallery).all()):
            raise NonFiniteEmbeddingsError("the model's embeddings contain NaN or infinite values")
        p = self.prefix
        metrics = prefixed_recall(self.true_ranks(queries, gallery), f"{p}t2i_", self.ks)
        if self.i2t:
            # Image-to-text over the images that have captions: an image's positives are all its titles
            # (the official transform_ir_annotation_to_tr.py + evaluation_tr.py).
            captions: dict[int, set[int]] = {}
            for qi, relevant in enumerate(self.positives()):
                for gi in relevant:
                    captions.setdefault(gi, set()).add(qi)
            image_ids = sorted(captions)
            ranks = true_ranks(gallery[image_ids], queries, [captions[g] for g in image_ids])
            metrics.update(prefixed_recall(ranks, f"{p}i2t_", self.ks))
        metrics[f"{p}gallery_size"] = len(self.gallery_paths)
        metrics[f"{p}queries"] = len(self.titles)
        return metrics
