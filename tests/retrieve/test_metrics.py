"""Tests for cnclip_lora.inference.metrics: Recall@K / MR against naive references, offline evaluate metric."""

from __future__ import annotations

import numpy as np
import pytest

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inference.metrics import recall_at_k
from cnclip_lora.inference.recall_metric import RetrievalRecall
from cnclip_lora.inference.search import rank


def _naive_recall(ranked, positives, ks=(1, 5, 10)):
    out = {}
    for k in ks:
        hits = 0
        for row, pos in zip(ranked, positives):
            pos = {pos} if isinstance(pos, (int, np.integer)) else set(pos)
            hits += any(int(x) in pos for x in list(row)[:k])
        out[f"R@{k}"] = 100.0 * hits / len(ranked)
    out["MR"] = sum(out[f"R@{k}"] for k in ks) / len(ks)
    return out


def _random_case(seed, n_q=60, n_g=30, width=12):
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(n_g)[:width] for _ in range(n_q)])
    positives = rng.integers(0, n_g, n_q).tolist()
    return rng, ranked, positives


@pytest.mark.parametrize("seed", range(5))
def test_recall_matches_naive_loop(seed):
    _, ranked, positives = _random_case(seed)
    got = recall_at_k(ranked, positives)
    want = _naive_recall(ranked, positives)
    assert got.keys() == want.keys() == {"R@1", "R@5", "R@10", "MR"}
    for key in want:
        assert got[key] == pytest.approx(want[key])
    assert got["R@1"] <= got["R@5"] <= got["R@10"] <= 100.0


def test_values_are_percent_and_mr_is_their_mean():
    ranked = np.array([[3, 1, 2, 0, 4, 5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    got = recall_at_k(ranked, [3, 7])  # query 0 hit at rank 1, query 1 at rank 8
    assert got == {"R@1": 50.0, "R@5": 50.0, "R@10": 100.0, "MR": pytest.approx(200.0 / 3)}


def test_set_positives_match_naive():
    rng, ranked, _ = _random_case(10)
    positives = [set(rng.choice(30, int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(len(ranked))]
    got = recall_at_k(ranked, positives)
    want = _naive_recall(ranked, positives)
    for key in want:
        assert got[key] == pytest.approx(want[key])
    # Mixed ints and sets are accepted too.
    mixed = [p if i % 2 else min(p) for i, p in enumerate(positives)]
    assert recall_at_k(ranked, mixed) == pytest.approx(_naive_recall(ranked, mixed))


def test_ranking_shorter_than_k_counts_hits_anywhere():
    ranked = np.array([[2, 1, 0], [0, 2, 1]])  # a gallery of 3 images, k up to 10
    got = recall_at_k(ranked, [0, 1])
    assert got["R@1"] == 0.0 and got["R@5"] == 100.0 and got["R@10"] == 100.0


def test_empty_positive_set_is_a_miss_and_padding_never_matches():
    ranked = np.array([[0, -1, -1], [1, 0, -1]])
    assert recall_at_k(ranked, [set(), {0}], ks=(1, 3)) == {"R@1": 0.0, "R@3": 50.0, "MR": 25.0}


def test_custom_ks():
    _, ranked, positives = _random_case(11)
    got = recall_at_k(ranked, positives, ks=(2, 3))
    assert set(got) == {"R@2", "R@3", "MR"}
    assert got == pytest.approx(_naive_recall(ranked, positives, ks=(2, 3)))


def test_recall_errors():
    with pytest.raises(CnClipLoraError, match="got 1 positives for 2 ranked queries"):
        recall_at_k(np.zeros((2, 3), int), [0])
    with pytest.raises(CnClipLoraError, match="2-D"):
        recall_at_k(np.zeros(3, int), [0, 0, 0])
    with pytest.raises(CnClipLoraError, match="at least one query"):
        recall_at_k(np.zeros((0, 3), int), [])
    with pytest.raises(ConfigError, match="positive integers"):
        recall_at_k(np.zeros((1, 3), int), [0], ks=(0, 5))
    with pytest.raises(CnClipLoraError, match="must be >= 0, got -1"):
        recall_at_k(np.zeros((1, 3), int), [-1])
    with pytest.raises(CnClipLoraError, match="must be >= 0, got -2"):
        recall_at_k(np.zeros((1, 3), int), [{1, -2}])


# --- the evaluate.Metric ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_metric_offline_equals_recall_at_k(seed):
    _, ranked, positives = _random_case(seed)
    metric = RetrievalRecall()
    got = metric.compute(predictions=ranked.tolist(), references=[[p] for p in positives])
    assert got == pytest.approx(recall_at_k(ranked, positives))
    assert got == pytest.approx(_naive_recall(ranked, positives))


def test_evaluate_metric_add_batch_and_ks():
    rng, ranked, _ = _random_case(4)
    refs = [rng.choice(30, 2, replace=False).tolist() for _ in range(len(ranked))]
    metric = RetrievalRecall()
    metric.add_batch(predictions=ranked[:25].tolist(), references=refs[:25])
    metric.add_batch(predictions=ranked[25:].tolist(), references=refs[25:])
    got = metric.compute(ks=(1, 3))
    assert got == pytest.approx(_naive_recall(ranked, refs, ks=(1, 3)))


def test_evaluate_metric_with_ties_resolved_by_rank():
    """Duplicate gallery vectors tie; `rank` orders them by index, recall just counts hits."""
    rng = np.random.default_rng(5)
    gallery = rng.standard_normal((40, 8)).astype(np.float32)
    gallery[20:30] = gallery[0:10]  # exact duplicates
    positives = list(range(20, 30)) + list(range(10, 20))
    queries = gallery[positives] + 0.05 * rng.standard_normal((20, 8)).astype(np.float32)
    _, indices = rank(queries, gallery, 10)
    got = RetrievalRecall().compute(predictions=indices.tolist(), references=[[p] for p in positives])
    assert got == pytest.approx(_naive_recall(indices, positives))
    # The first ten queries' targets are duplicates of lower-indexed images, which rank first.
    assert got["R@1"] == pytest.approx(50.0) and got["R@5"] == pytest.approx(100.0)
