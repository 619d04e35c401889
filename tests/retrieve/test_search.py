"""Tests for cnclip_lora.inference.search: exact chunked top-k, tie-breaking, faiss, assignment."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inference import search as ranking
from cnclip_lora.inference.search import DENSE_ONE_TO_ONE_BYTES, assign, assign_one_to_one, rank


def _brute_topk(q, g, k, normalize=True):
    """Reference: float64 full score matrix, stable argsort on -score (ties -> lower index)."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = q @ g.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


@pytest.fixture
def integer_data():
    """Small-integer vectors: every dot product is exact in float32, so ties are real ties."""
    rng = np.random.default_rng(0)
    g = rng.integers(-2, 3, (2560, 4)).astype(np.float32)
    q = rng.integers(-2, 3, (40, 4)).astype(np.float32)
    return q, g


# chunk sizes cover: the two-stage path (width a multiple of 64, >= 2 * k * 64), the plain
# topk fallback (odd widths), blocks narrower than k, and one block for everything.
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("chunk_size,query_chunk_size", [(None, None), (1280, 7), (640, None), (333, 16), (5, None)])
def test_exact_ties_match_stable_bruteforce(integer_data, k, chunk_size, query_chunk_size):
    q, g = integer_data
    scores, indices = rank(q, g, k, chunk_size=chunk_size, query_chunk_size=query_chunk_size, normalize=False)
    ref_s, ref_i = _brute_topk(q, g, k, normalize=False)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))


def test_duplicate_gallery_vectors_come_back_in_index_order():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((3000, 16)).astype(np.float32)
    g[[50, 700, 2999]] = g[1500]  # four copies of one vector across different blocks
    q = g[1500:1501] * 3.0
    scores, indices = rank(q, g, 6, chunk_size=640)
    assert indices[0, :4].tolist() == [50, 700, 1500, 2999]
    assert np.all(scores[0, :4] == scores[0, 0]) and scores[0, 4] < scores[0, 3]


@pytest.mark.parametrize("chunk_size", [None, 640, 1000])
def test_random_float_data_matches_bruteforce(chunk_size):
    rng = np.random.default_rng(2)
    g = rng.standard_normal((4000, 32)).astype(np.float32)
    q = rng.standard_normal((30, 32)).astype(np.float32)
    scores, indices = rank(q, g, 10, chunk_size=chunk_size)
    ref_s, ref_i = _brute_topk(q, g, 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    np.testing.assert_array_equal(indices, ref_i)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("chunk_size", [None, 640, 333])
def test_gallery_sorted_by_similarity_defeats_pruning_but_stays_exact(chunk_size):
    """Worst case for the pruned merge: every later block beats every query's whole top-k."""
    rng = np.random.default_rng(3)
    q = np.abs(rng.standard_normal((20, 8))).astype(np.float32)
    g = (rng.standard_normal((3000, 8)) * 0.01 + np.linspace(0, 1, 3000)[:, None]).astype(np.float32)
    scores, indices = rank(q, g, 10, chunk_size=chunk_size, normalize=False)
    ref_s, ref_i = _brute_topk(q, g, 10, normalize=False)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5)


def test_later_blocks_merge_only_rows_they_can_change(monkeypatch):
    """Once a query's top-k is full, a block whose scores all fall below its k-th best
    leaves it untouched: the merges after the first block see far fewer rows."""
    merged_rows = []
    real_merge = ranking._merge

    def spy(best_s, best_i, rows, vals, idx, k):
        merged_rows.append(len(range(*rows.indices(len(best_s)))) if isinstance(rows, slice) else len(rows))
        real_merge(best_s, best_i, rows, vals, idx, k)

    monkeypatch.setattr(ranking, "_merge", spy)
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((200, 16)), rng.standard_normal((64_000, 16))
    _, indices = rank(q, g, 5, chunk_size=640)
    np.testing.assert_array_equal(indices, _brute_topk(q, g, 5)[1])
    assert merged_rows[0] == 200  # the first block seeds every query
    assert len(merged_rows) <= 100 and sum(merged_rows[-20:]) < 0.1 * 20 * 200


def test_accepts_torch_tensors_of_any_float_dtype():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((200, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    ref_s, ref_i = rank(q, g, 5)
    s16, i16 = rank(torch.from_numpy(q).half(), torch.from_numpy(g).bfloat16(), 5)
    s64, i64 = rank(torch.from_numpy(q).double(), g.astype(np.float64), 5)
    np.testing.assert_array_equal(i64, ref_i)
    np.testing.assert_allclose(s64, ref_s, atol=1e-6)
    np.testing.assert_allclose(s16, ref_s, atol=3e-2)  # low-precision inputs, float32 maths


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_rank_on_gpu_like_cpu(integer_data):
    q, g = integer_data
    cpu_s, cpu_i = rank(q, g, 10, chunk_size=1280, normalize=False)
    gpu_s, gpu_i = rank(torch.from_numpy(q), torch.from_numpy(g).cuda(), 10, chunk_size=1280, normalize=False)
    np.testing.assert_array_equal(gpu_i, cpu_i)
    np.testing.assert_array_equal(gpu_s, cpu_s)
    gf = torch.randn(20000, 64, device="cuda")
    qf = torch.randn(50, 64, device="cuda")
    gs, gi = rank(qf, gf, 10)
    ref_s, ref_i = _brute_topk(qf.cpu().numpy(), gf.cpu().numpy(), 10)
    np.testing.assert_allclose(gs, ref_s, atol=1e-5)
    assert (gi == ref_i).mean() > 0.99  # float32 GPU rounding may swap near-ties


def test_normalize_false_uses_raw_dot_products():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.5, 0.0], [3.0, 3.0]], dtype=np.float32)
    assert rank(q, g, 2)[1].tolist() == [[0, 1]]  # cosine: 1.0 vs 0.707
    assert rank(q, g, 2, normalize=False)[1].tolist() == [[1, 0]]  # dot: 3.0 vs 0.5


def test_k_larger_than_gallery_returns_whole_gallery():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((7, 4)).astype(np.float32)
    q = rng.standard_normal((3, 4)).astype(np.float32)
    scores, indices = rank(q, g, 50)
    assert scores.shape == indices.shape == (3, 7)
    assert all(sorted(row) == list(range(7)) for row in indices.tolist())
    np.testing.assert_array_equal(indices, _brute_topk(q, g, 7)[1])


def test_empty_queries_give_empty_results():
    scores, indices = rank(np.zeros((0, 4), np.float32), np.ones((5, 4), np.float32), 3)
    assert scores.shape == indices.shape == (0, 3)


def test_zero_vectors_score_zero_not_nan():
    g = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    scores, indices = rank(np.array([[-1.0, 0.0]], np.float32), g, 2)
    assert indices.tolist() == [[0, 1]] and scores.tolist() == [[0.0, -1.0]]


def test_input_errors():
    g = np.ones((5, 4), np.float32)
    with pytest.raises(ConfigError, match="top_k must be a positive integer, got 0"):
        rank(g, g, 0)
    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        rank(g, g, -3)
    with pytest.raises(CnClipLoraError, match="the gallery is empty"):
        rank(g, np.zeros((0, 4), np.float32), 5)
    with pytest.raises(CnClipLoraError, match=r"query embeddings \(5, 4\) and gallery embeddings \(5, 3\)"):
        rank(g, np.ones((5, 3), np.float32), 5)
    with pytest.raises(CnClipLoraError, match="must be a 2-D"):
        rank(np.ones(4, np.float32), g, 5)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        rank(g, g, 2, chunk_size=0)
    with pytest.raises(ConfigError, match="index_type must be"):
        rank(g, g, 2, use_faiss=True, index_type="lsh")
    bad = g.copy()
    bad[2, 1] = np.nan
    with pytest.raises(CnClipLoraError, match="gallery embeddings contain NaN"):
        rank(g, bad, 2)
    with pytest.raises(CnClipLoraError, match="query embeddings contain NaN"):
        rank(bad, g, 2, normalize=False)


def test_memory_is_bounded_by_blocks(monkeypatch):
    """No tensor of the full [Q, G] size is ever built (checked on the matmul outputs)."""
    shapes = []
    real_matmul = torch.matmul

    def spy(a, b, *args, **kwargs):
        out = real_matmul(a, b, *args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(ranking, "_BLOCK_ELEMENTS", 4096)
    monkeypatch.setattr(torch, "matmul", spy)
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((100, 8)), rng.standard_normal((1000, 8))
    _, indices = rank(q, g, 5)
    assert shapes and max(a * b for a, b in shapes) <= 4096 + 1000
    np.testing.assert_array_equal(indices, _brute_topk(q, g, 5)[1])


# --- faiss --------------------------------------------------------------------------


def test_faiss_flat_matches_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    g = rng.standard_normal((3000, 24)).astype(np.float32)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    es, ei = rank(q, g, 10)
    fs, fi = rank(q, g, 10, use_faiss=True)
    np.testing.assert_allclose(fs, es, atol=1e-5)
    untied = np.abs(np.diff(es, axis=1, prepend=np.inf)) > 1e-6
    np.testing.assert_array_equal(fi[untied], ei[untied])


def _recall10(approx, exact):
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])


@pytest.mark.parametrize("index_type,kwargs", [("hnsw", {}), ("ivf", {"nprobe": 48})])
def test_faiss_approximate_indexes_keep_recall(index_type, kwargs):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    g = rng.standard_normal((5000, 32)).astype(np.float32)
    q = rng.standard_normal((100, 32)).astype(np.float32)
    _, exact = rank(q, g, 10)
    _, approx = rank(q, g, 10, use_faiss=True, index_type=index_type, **kwargs)
    assert _recall10(approx, exact) >= 0.9


def test_faiss_ivf_default_on_clustered_data():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((40, 32))
    g = (centres[rng.integers(0, 40, 5000)] + 0.5 * rng.standard_normal((5000, 32))).astype(np.float32)
    q = (centres[rng.integers(0, 40, 100)] + 0.5 * rng.standard_normal((100, 32))).astype(np.float32)
    _, exact = rank(q, g, 10)
    _, approx = rank(q, g, 10, use_faiss=True, index_type="ivf")
    assert _recall10(approx, exact) >= 0.9


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    g = np.ones((5, 4), np.float32)
    with pytest.raises(CnClipLoraError, match=r"pip install 'cnclip-lora\[faiss\]'"):
        rank(g, g, 2, use_faiss=True)


# --- assign -------------------------------------------------------------------------


def _total(scores, indices, chosen):
    pos = [list(row).index(c) for row, c in zip(indices, chosen)]
    return float(sum(scores[i, p] for i, p in enumerate(pos)))


def test_argmax_takes_best_and_breaks_ties_by_lower_index():
    scores = np.array([[0.9, 0.5], [0.7, 0.7], [0.2, 0.8]])
    indices = np.array([[4, 1], [6, 3], [0, 5]])
    assert assign(scores, indices, "argmax").tolist() == [4, 3, 5]


def test_hungarian_resolves_collisions_with_higher_total():
    # Both queries prefer image 0; argmax gives it twice.
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    indices = np.array([[0, 1], [0, 2]])
    greedy = assign(scores, indices, "argmax")
    assert greedy.tolist() == [0, 0]
    one_to_one = assign(scores, indices, "hungarian")
    assert one_to_one.tolist() == [1, 0]
    assert _total(scores, indices, one_to_one) == pytest.approx(0.8 + 0.85)
    # Among one-to-one choices it beats the greedy fix-up (keep query 0's best).
    assert _total(scores, indices, one_to_one) > 0.9 + 0.1


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_equals_bruteforce_optimum(seed):
    rng = np.random.default_rng(seed)
    n_q, n_g, k = int(rng.integers(2, 6)), 7, 4
    sims = rng.random((n_q, n_g))
    _, indices = rank(rng.standard_normal((n_q, 3)), rng.standard_normal((n_g, 3)), k)
    scores = np.take_along_axis(sims, indices, 1)
    cand = [dict(zip(row, s)) for row, s in zip(indices.tolist(), scores.tolist())]
    best = -np.inf
    for perm in itertools.permutations(range(n_g), n_q):
        if all(p in c for p, c in zip(perm, cand)):
            best = max(best, sum(c[p] for p, c in zip(perm, cand)))
    if best == -np.inf:
        with pytest.raises(CnClipLoraError, match="raise --top_k"):
            assign(scores, indices, "hungarian", n_gallery=n_g)
        return
    chosen = assign(scores, indices, "hungarian", n_gallery=n_g)
    assert len(set(chosen.tolist())) == n_q
    assert _total(scores, indices, chosen) == pytest.approx(best)


def test_sparse_solver_path_agrees_with_dense(monkeypatch):
    rng = np.random.default_rng(20)
    q, g = rng.standard_normal((60, 8)), rng.standard_normal((300, 8))
    scores, indices = rank(q, g, 8)
    dense = assign(scores, indices, "hungarian")
    monkeypatch.setattr(ranking, "_DENSE_ASSIGN_LIMIT", 0)
    sparse = assign(scores, indices, "hungarian")
    assert len(set(sparse.tolist())) == 60
    assert _total(scores, indices, sparse) == pytest.approx(_total(scores, indices, dense))


def test_hungarian_never_reuses_an_image_on_realistic_data():
    rng = np.random.default_rng(21)
    g = rng.standard_normal((500, 16))
    q = g[rng.choice(500, 100, replace=False)] + 0.8 * rng.standard_normal((100, 16))
    scores, indices = rank(q, g, 10)
    chosen = assign(scores, indices, "hungarian", n_gallery=500)
    assert len(np.unique(chosen)) == 100
    assert _total(scores, indices, chosen) <= scores[:, 0].sum() + 1e-9
    assert all(c in row for c, row in zip(chosen, indices))


def test_assign_errors():
    scores, indices = np.array([[0.9], [0.8]]), np.array([[0], [0]])
    with pytest.raises(CnClipLoraError, match="impossible: 2 queries but only 1 gallery images"):
        assign(scores, indices, "hungarian", n_gallery=1)
    with pytest.raises(CnClipLoraError, match="2 queries share 1 candidates; raise --top_k or use argmax"):
        assign(scores, indices, "hungarian")
    # Enough distinct candidates overall, but two queries can only take image 0.
    scores3, indices3 = np.array([[0.9], [0.8], [0.7]]), np.array([[0], [0], [1]])
    with pytest.raises(CnClipLoraError, match="no one-to-one assignment exists"):
        assign(
            np.hstack([scores3, [[-np.inf], [-np.inf], [0.1]]]), np.hstack([indices3, [[-1], [-1], [2]]]), "hungarian"
        )
    with pytest.raises(ConfigError, match="must be one of argmax, hungarian; got 'greedy'"):
        assign(scores, indices, "greedy")
    with pytest.raises(CnClipLoraError, match="same shape"):
        assign(np.ones((2, 3)), np.ones((2, 2), int))
    with pytest.raises(CnClipLoraError, match="no candidates"):
        assign(np.zeros((2, 0)), np.zeros((2, 0), int))
    with pytest.raises(CnClipLoraError, match="query 1 has no valid candidate"):
        assign(np.array([[0.5], [-np.inf]]), np.array([[0], [-1]]))
    assert assign(np.zeros((0, 3)), np.zeros((0, 3), int), "hungarian").shape == (0,)


# --- assign_one_to_one: never gives up while a one-to-one choice exists -----------------------


def _hub_case(n_q: int = 150, n_g: int = 550, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every query's top-10 is the same 10 'hub' images (the issue's 150 queries x 550 images)."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(16)
    gallery = 0.3 * rng.standard_normal((n_g, 16))
    gallery[:10] += 3 * direction  # ten images close to every query
    queries = direction + 0.05 * rng.standard_normal((n_q, 16))
    _, top = rank(queries, gallery, 10)
    assert (np.sort(top, axis=1) == np.arange(10)).all()
    return queries, gallery


def _dense_optimum(queries, gallery) -> float:
    from scipy.optimize import linear_sum_assignment

    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = qn @ gn.T
    r, c = linear_sum_assignment(-sims)
    return float(sims[r, c].sum())


def _sim_total(queries, gallery, chosen) -> float:
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    return float((qn * gn[chosen]).sum())


def test_one_to_one_when_every_query_shares_the_same_top10():
    queries, gallery = _hub_case()
    with pytest.raises(CnClipLoraError):  # the candidate-list assignment gives up here ...
        assign(*rank(queries, gallery, 10), "hungarian", n_gallery=len(gallery))
    chosen = assign_one_to_one(queries, gallery)  # ... the whole-gallery one does not
    assert len(set(chosen.tolist())) == 150
    assert _sim_total(queries, gallery, chosen) == pytest.approx(_dense_optimum(queries, gallery), abs=1e-6)


def test_one_to_one_above_the_dense_threshold_widens_until_complete():
    queries, gallery = _hub_case(seed=1)
    assert len(queries) * len(gallery) * 8 > 1024  # the limit below puts this case above the dense threshold
    chosen = assign_one_to_one(queries, gallery, dense_limit_bytes=1024, start_k=4)
    assert len(set(chosen.tolist())) == 150 and chosen.min() >= 0 and chosen.max() < len(gallery)
    # Optimal over candidates that had to grow far beyond the shared top-10: within 0.1 % of the
    # whole-matrix optimum (exact equality is only promised below the dense threshold).
    assert _sim_total(queries, gallery, chosen) >= 0.999 * _dense_optimum(queries, gallery)
    assert DENSE_ONE_TO_ONE_BYTES >= 500 * 9884 * 8  # the competition's size is solved densely


@pytest.mark.parametrize("seed", range(8))
def test_one_to_one_equals_dense_optimum_on_random_cases(seed):
    rng = np.random.default_rng(100 + seed)
    n_q, n_g = int(rng.integers(2, 40)), int(rng.integers(40, 90))
    queries, gallery = rng.standard_normal((n_q, 6)), rng.standard_normal((n_g, 6))
    chosen = assign_one_to_one(queries, gallery)
    assert len(set(chosen.tolist())) == n_q
    assert _sim_total(queries, gallery, chosen) == pytest.approx(_dense_optimum(queries, gallery), abs=1e-9)


def test_one_to_one_rejects_more_queries_than_images():
    with pytest.raises(CnClipLoraError, match="3 queries but only 2 gallery images"):
        assign_one_to_one(np.ones((3, 4)), np.ones((2, 4)))


def test_a_huge_k_is_capped_at_the_gallery_before_allocating():
    """k = 10^9 on a 50-image gallery: the whole gallery, ranked, in no more memory than k = 50."""
    import tracemalloc

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    tracemalloc.start()
    scores, indices = ranking.rank(q, g, k=10**9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert indices.shape == (200, 50) and scores.shape == (200, 50)
    assert peak < 50 * 1024 * 1024
    np.testing.assert_array_equal(indices, ranking.rank(q, g, k=50)[1])
