"""Retrieval metrics: Recall@K and their mean (MR), in percent, as the field reports them.

Every metric the package reports comes from the *exact, full-gallery* rank of each query's first
positive (:func:`true_ranks`), never from a truncated top-k list, so no ``--top_k`` changes a
number. One tie rule everywhere: a gallery item scoring exactly as high as the positive counts
*against* it (ranks above it), so a constant model scores no better than chance.
:func:`recall_from_ranks` turns ranks into Recall@K + MR; :func:`recall_at_k` does the same for a
given ranking (gallery indices per query). This module needs numpy only; the ``evaluate.Metric``
:class:`cnclip_lora.inference.recall_metric.RetrievalRecall` is a thin wrapper for ``evaluate`` users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError

__all__ = ["positive_list", "recall_at_k", "recall_from_ranks", "true_ranks"]

Positive = int | set[int] | frozenset[int] | Sequence[int]


def positive_list(label: Positive) -> list[int]:
    """A query's relevant indices as a list: one plain label, or its several (any order kept)."""
    return [int(label)] if isinstance(label, (int, np.integer)) else [int(i) for i in label]


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


def _positive_sets(positives: Sequence[Positive], n_gallery: int) -> list[np.ndarray]:
    out = []
    for pos in positives:
        arr = np.asarray([pos] if isinstance(pos, (int, np.integer)) else sorted(pos), dtype=np.int64)
        _check_positive_indices(arr)
        if arr.size and arr.max() >= n_gallery:
            raise CnClipLoraError(f"positive gallery index {int(arr.max())} is outside the gallery of {n_gallery}")
        out.append(arr)
    return out


def true_ranks(queries, gallery, positives: Sequence[Positive], *, block: int = 1024) -> np.ndarray:
    """1-based rank of each query's best-scoring positive among *all* gallery items, ties against it.

    ``rank = 1 + (number of non-positive items scoring >= the best positive's score)``; a query
    without positives gets ``inf``. Scores are inner products of the rows of ``queries [Q, D]`` and
    ``gallery [G, D]`` (cosine for the L2-normalised embeddings), computed in blocks of ``block``
    queries so memory stays ``O(block * G)``.
    """
    queries = np.asarray(queries, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if len(positives) != len(queries):
        raise CnClipLoraError(f"got {len(positives)} positives for {len(queries)} queries; they must match")
    pos_sets = _positive_sets(positives, len(gallery))
    single = all(p.size == 1 for p in pos_sets)
    out = np.full(len(queries), np.inf)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ gallery.T
        if single:  # one positive per query: the whole block at once
            labels = np.concatenate(pos_sets[start : start + block]) if len(sims) else np.zeros(0, np.int64)
            best = sims[np.arange(len(sims)), labels]
            out[start : start + len(sims)] = (sims >= best[:, None]).sum(axis=1)
            continue
        for row, pos in enumerate(pos_sets[start : start + block]):
            if not pos.size:
                continue
            scores = sims[row]
            best = scores[pos].max()
            above = int(np.count_nonzero(scores >= best)) - int(np.count_nonzero(scores[pos] >= best))
            out[start + row] = 1 + above
    return out


def recall_from_ranks(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (percent) for each cut-off and their mean ``MR``, from 1-based ranks (``inf`` = never found)."""
    ks = _check_ks(ks)
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise CnClipLoraError(f"recall needs a non-empty 1-D array of ranks, got shape {ranks.shape}")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MR"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out
