"""``RetrievalRecall``: Recall@K / MR as an ``evaluate.Metric`` defined here, so it works offline.

Kept apart from :mod:`cnclip_lora.inference.metrics` because importing ``evaluate`` is slow (it pulls in
``transformers.pipelines``); the CLI and every launched process would otherwise pay it at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

from cnclip_lora.inference.metrics import recall_at_k

__all__ = ["RetrievalRecall"]

_DESCRIPTION = """Text-image retrieval recall: the share (percent) of queries whose correct gallery item
is among the first K ranked items, for each K, and MR, the mean of those recalls."""

_INPUTS = """
Args:
    predictions: per query, ranked gallery indices (best first).
    references: per query, the correct gallery indices (one or several).
    ks: recall cut-offs, default (1, 5, 10).
Returns:
    dict with R@K for each K and MR, in percent.
Example:
    >>> RetrievalRecall().compute(predictions=[[3, 1], [0, 2]], references=[[1], [0]], ks=(1, 2))
    {'R@1': 50.0, 'R@2': 100.0, 'MR': 75.0}
"""


class RetrievalRecall(evaluate.Metric):
    """Recall@K / MR as an ``evaluate`` metric that works offline (no Hub download).

    Supports ``add_batch`` across evaluation steps and evaluate's distributed gathering;
    the maths is :func:`recall_at_k`.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        # Rankings may differ in length (e.g. faiss returning fewer hits); pad with -1,
        # which never matches a gallery index.
        width = max((len(p) for p in predictions), default=0)
        ranked = np.full((len(predictions), width), -1, dtype=np.int64)
        for q, p in enumerate(predictions):
            ranked[q, : len(p)] = p
        return recall_at_k(ranked, [set(int(i) for i in r) for r in references], ks=ks)
