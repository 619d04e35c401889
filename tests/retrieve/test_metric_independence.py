"""Metrics come from the exact full-gallery ranking, once: no ``--top_k`` changes a number, and a tie
counts against the true image everywhere (``retrieve``, ``evaluate``, the report)."""

from __future__ import annotations

import numpy as np
import pytest
from serve_utils import make_random_adapter

from cnclip_lora.inference.metrics import recall_at_k, recall_from_ranks, true_ranks
from cnclip_lora.retrieve.arguments import RetrieveArguments
from cnclip_lora.retrieve.run import retrieve


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", seed=3)


def test_retrieve_metrics_do_not_depend_on_top_k(tiny_model_dir, demo_dir, adapter, tmp_path):
    assert (demo_dir / "test_answers.csv").is_file()
    metrics = {}
    for k in (1, 2, 10, 100):
        result = retrieve(
            RetrieveArguments(
                model_name_or_path=str(tiny_model_dir),
                adapter=str(adapter),
                data_dir=str(demo_dir),
                topk_output=str(tmp_path / f"top{k}.csv"),
                top_k=k,
                device="cpu",
                cache_dir=str(tmp_path / "cache"),
            )
        )
        assert result.indices.shape[1] == min(k, result.metrics["gallery_size"])
        metrics[k] = result.metrics
    assert metrics[1] == metrics[2] == metrics[10] == metrics[100]
    assert metrics[1]["test_t2i_R@10"] > metrics[1]["test_t2i_R@1"] or metrics[1]["test_t2i_R@10"] == 100


def test_ties_count_against_the_true_image():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # 0 and 1 tie
    assert true_ranks(queries, gallery, [0]).tolist() == [2]
    assert true_ranks(queries, gallery, [1]).tolist() == [2]
    assert true_ranks(queries, gallery, [{0, 1}]).tolist() == [1]  # either positive is a hit at rank 1
    assert recall_from_ranks([2], ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0, "MR": 50.0}


def test_ranks_agree_with_a_full_ranking_without_ties():
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(40, 8)), rng.normal(size=(300, 8))
    labels = rng.integers(0, 300, 40).tolist()
    ranking = np.argsort(-(queries @ gallery.T), axis=1)
    assert recall_from_ranks(true_ranks(queries, gallery, labels)) == recall_at_k(ranking, labels)
