"""Retrieval metrics: Recall@K and their mean (MR), in percent, as the field reports them.

``recall_at_k`` works on rankings (gallery indices per query), so the ranking method
(exact, faiss, chunk sizes) never changes how a hit is counted. It is the computation behind the
``evaluate.Metric`` :class:`cnclip_lora.inference.recall_metric.RetrievalRecall` (``evaluate.load("recall")``
needs the Hub and is classification recall anyway), through which every part of the package scores:
:class:`cnclip_lora.inference.evaluator.RetrievalEvaluator` ranks and prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError

__all__ = ["recall_at_k"]

Positive = int | set[int] | frozenset[int] | Sequence[int]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0 for k in ks):
        raise ConfigError(f"recall cut-offs ks must be positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def _check_positive_indices(pos: np.ndarray) -> None:
    # -1 is the padding of short rankings; a negative positive would silently match it.
    if pos.size and pos.min() < 0:
        raise CnClipLoraError(f"positive gallery indices must be >= 0, got {int(pos.min())}")


def _first_hit(ranked: np.ndarray, positives: Sequence[Positive]) -> np.ndarray:
    """0-based rank of each query's first positive in its ranking; ``inf`` if none."""
    n_q = ranked.shape[0]
    first = np.full(n_q, np.inf)
    if n_q == 0 or ranked.shape[1] == 0:
        return first
    if all(isinstance(p, (int, np.integer)) for p in positives):
        pos = np.asarray(positives, dtype=np.int64)
        _check_positive_indices(pos)
        hits = ranked == pos[:, None]
    else:
        hits = np.zeros(ranked.shape, dtype=bool)
        for q, pos in enumerate(positives):
            pos = np.asarray([pos] if isinstance(pos, (int, np.integer)) else sorted(pos), dtype=np.int64)
            _check_positive_indices(pos)
            hits[q] = np.isin(ranked[q], pos)
    any_hit = hits.any(axis=1)
    first[any_hit] = hits[any_hit].argmax(axis=1)
    return first


def recall_at_k(
    ranked,
    positives: Sequence[Positive],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K for each cut-off and their mean, in percent (0-100).

    A query is a hit at K when one of its positives is among its first K ranked gallery
    items. A ranking shorter than K (a gallery smaller than K) counts a hit anywhere in it.
    Several positives per query (a set) are allowed, e.g. image->text with several
    captions per image; an empty set is always a miss.

    Args:
        ranked: ``[Q, K']`` gallery indices per query, best first (as from :func:`rank`).
        positives: per query, the correct gallery index or a set of them.
        ks: recall cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "MR": mean of the R@K}``.

    Example:
        >>> recall_at_k([[2, 0, 1], [1, 2, 0]], [0, 1], ks=(1, 2))
        {'R@1': 50.0, 'R@2': 100.0, 'MR': 75.0}
    """
    ks = _check_ks(ks)
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise CnClipLoraError(f"ranked must be a 2-D [queries, k] array of gallery indices, got shape {ranked.shape}")
    if len(positives) != ranked.shape[0]:
        raise CnClipLoraError(f"got {len(positives)} positives for {ranked.shape[0]} ranked queries; they must match")
    if ranked.shape[0] == 0:
        raise CnClipLoraError("recall needs at least one query, got none")
    first = _first_hit(ranked.astype(np.int64, copy=False), positives)
    out = {f"R@{k}": float(100.0 * np.mean(first < k)) for k in ks}
    out["MR"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out
