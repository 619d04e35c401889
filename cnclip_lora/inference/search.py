"""Exact (or faiss) top-k cosine ranking in bounded memory, and query -> image assignment.

The full score matrix of a realistic retrieval (2,000 queries x 300,000 images) is 2.4 GB;
``rank`` never builds it. Queries and gallery are cut into blocks of at most
``_BLOCK_ELEMENTS`` scores (16 MB of float32, sized to stay in a CPU's last-level cache).
The first block seeds each query's running top-k; every later block is pruned exactly: one
max pass finds the few scores that beat a query's current k-th best, and only those are
merged. Extra memory is one score block, one normalised gallery chunk and ``O(Q * k)``
(about 40 MB at that size). Time is ~1.05x the single full matrix product on a 2-core CPU
(``benchmarks/RESULTS.md``): the blocked products write to cache instead of memory, and the
pass and the merges cost ~5-10 %. A gallery sorted by rising similarity defeats the pruning
(every block changes every row): such blocks fall back to a per-block top-k (1.5x).

Ties are broken deterministically: equal scores rank the lower gallery index first, both
within a block (``torch.topk`` alone does not promise which tied element it keeps) and
across blocks. Duplicate gallery vectors therefore come back in index order. ("Equal"
means equal float32 dot products; chunk sizes can change the last bit of a score, so
near-ties between *different* vectors may order differently with other chunk sizes.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.options import Assign, FaissIndex, parse_choice

if TYPE_CHECKING:
    import torch

__all__ = ["rank", "assign", "assign_one_to_one", "DENSE_ONE_TO_ONE_BYTES"]

# CPU: 4 M float32 scores = 16 MB per block, small enough to stay in a server CPU's
# last-level cache between the matrix product that writes it and the max pass that prunes
# it (see _merge_pruned), big enough to keep the product efficient. GPUs have no such
# cache to fit and pay a host sync per block, so they take 64 MB blocks.
_BLOCK_ELEMENTS = 4 * 1024 * 1024
_GPU_BLOCK_ELEMENTS = 16 * 1024 * 1024
_DEFAULT_QUERY_CHUNK = 2048
# Width of the column runs in the two-stage block top-k (see _block_topk).
_GROUP = 64
# Dense Hungarian cost matrices above this many entries (float64) use the sparse solver.
_DENSE_ASSIGN_LIMIT = 20_000_000

# One-to-one assignment over the *whole* score matrix (float64 costs, as scipy's solver takes them)
# while it stays at or below this size: 512 MB, i.e. 64 M query-image pairs. The competition's
# 500 queries x 9,884 images is 40 MB. Above it, candidates are widened until complete.
DENSE_ONE_TO_ONE_BYTES = 512 * 1024 * 1024

FAISS_HINT = "install the faiss extra: pip install 'cnclip-lora[faiss]'"


def _as_float_tensor(x, name: str) -> torch.Tensor:
    import torch

    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
    if t.ndim != 2:
        raise CnClipLoraError(f"{name} must be a 2-D [n, dim] array, got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise CnClipLoraError(f"{name} must hold floats, got dtype {t.dtype}")
    return t


def _inv_norms(x: torch.Tensor, name: str) -> torch.Tensor:
    """1 / row norms; also the finiteness check (a NaN/inf anywhere makes its row norm non-finite),
    which is far cheaper than ``torch.isfinite`` over the whole array."""
    import torch

    norms = x.float().norm(dim=1)
    if not bool(torch.isfinite(norms).all()):
        raise CnClipLoraError(f"{name} embeddings contain NaN or infinite values")
    # Zero vectors get scores 0 rather than NaN, like F.normalize's eps.
    return 1.0 / norms.clamp(min=1e-12)


def _normalized(x: torch.Tensor, name: str, normalize: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    import torch

    x = x.float()
    inv = _inv_norms(x, name)
    if not normalize:
        return x
    if out is None:
        return x * inv[:, None]
    out = out[: x.numel()].view(x.shape)
    return torch.mul(x, inv[:, None], out=out)


def _check_inputs(query, gallery, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"top_k must be a positive integer, got {k!r}")
    q = _as_float_tensor(query, "query embeddings")
    g = _as_float_tensor(gallery, "gallery embeddings")
    if g.shape[0] == 0:
        raise CnClipLoraError("the gallery is empty: there are no images to rank the queries against")
    if q.shape[1] != g.shape[1]:
        raise CnClipLoraError(
            f"query embeddings {tuple(q.shape)} and gallery embeddings {tuple(g.shape)} have "
            "different dimensions; were they produced by the same model?"
        )
    return q, g


def _lexsorted_topk(scores: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of small candidate rows ordered by (-score, index): ``[n, c]`` -> ``[n, k]``."""
    import torch

    by_index = torch.sort(index, dim=1, stable=True)
    s = scores.gather(1, by_index.indices)
    by_score = torch.sort(s, dim=1, descending=True, stable=True)
    top = by_score.indices[:, :k]
    return by_score.values[:, :k], by_index.values.gather(1, top)


def _block_topk(block: torch.Tensor, k: int, run_max: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of a ``[q, g]`` score block (block-local indices, ties to the lower index).

    ``run_max``: the block's maxima over runs of ``_GROUP`` columns, when the caller has them.
    """
    import torch

    n, w = block.shape
    if k >= w:
        vals, idx = block.topk(w, dim=1, sorted=True)
        return _lexsorted_topk(vals, idx, k)
    m = _GROUP
    if w % m == 0 and w // m > k and 2 * k * m <= w:
        # Two-stage select, about twice as fast as torch.topk over the whole block: the
        # maximum of each run of m columns (one vectorised pass), the top-k runs, then top-k
        # among their k * m scores. Every top-k element lies in a top-k run: a run outside
        # them sits below k runs that each hold a larger score.
        blocks = block.view(n, w // m, m)
        run_max = blocks.amax(dim=2) if run_max is None else run_max
        run_vals, runs = run_max.topk(k + 1, dim=1, sorted=True)
        runs = runs[:, :k]
        cand = blocks[torch.arange(n, device=block.device)[:, None], runs].view(n, k * m)
        vals, pos = cand.topk(k + 1, dim=1, sorted=True)
        idx = runs.gather(1, pos // m) * m + pos % m
        tied = (vals[:, k] == vals[:, k - 1]) | (run_vals[:, k] == run_vals[:, k - 1])
    else:
        vals, idx = block.topk(k + 1, dim=1, sorted=True)
        tied = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    # torch.topk may keep any of several elements tied with the k-th value. The extra
    # (k+1)-th element flags rows with a tie straddling the boundary (a tie between run
    # maxima could also hide one); those rows are redone over the whole row: everything
    # strictly above the k-th value, then the lowest-index elements equal to it. Exact ties
    # are rare except for duplicate gallery vectors, so usually no row is redone.
    bad = torch.nonzero(tied).flatten()
    if bad.numel():
        sub = block[bad]
        t = sub.topk(k, dim=1).values[:, -1:]
        gt = sub > t
        eq = sub == t
        need = k - gt.sum(dim=1, keepdim=True)
        keep = gt | (eq & (eq.cumsum(dim=1) <= need))
        cols = torch.nonzero(keep)[:, 1].view(len(bad), k)  # row-major: ascending index per row
        vals[bad], idx[bad] = sub.gather(1, cols), cols
    return vals, idx


def _rank_exact(
    q: torch.Tensor, g: torch.Tensor, k: int, chunk_size: int | None, query_chunk_size: int | None, normalize: bool
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    n_q, n_g = q.shape[0], g.shape[0]
    dev = g.device
    block_elements = _BLOCK_ELEMENTS if dev.type == "cpu" else _GPU_BLOCK_ELEMENTS
    qc = query_chunk_size or max(1, min(n_q, _DEFAULT_QUERY_CHUNK))
    # Whole runs of _GROUP columns keep the run-max pruning and two-stage top-k available.
    per_block = block_elements // qc
    gc = chunk_size or max(k, per_block // _GROUP * _GROUP or per_block)
    q = q.to(dev)
    best_s = torch.full((n_q, k), float("-inf"), device=dev)
    best_i = torch.full((n_q, k), -1, dtype=torch.long, device=dev)
    # Reused score and gallery buffers: a fresh tensor per block costs page faults, and a
    # block that stays in the last-level cache makes the pruning pass below nearly free.
    buf = torch.empty(min(qc, n_q) * min(gc, n_g), device=dev)
    g_buf = torch.empty(min(gc, n_g) * g.shape[1], device=dev) if normalize else None
    # Queries are normalised once when small (the usual case); otherwise per block.
    q_small = n_q * q.shape[1] <= block_elements
    q_all = _normalized(q, "query", normalize) if q_small else None
    # Gallery outer, queries inner: each gallery chunk is normalised/converted once.
    for g0 in range(0, n_g, gc):
        g_blk = _normalized(g[g0 : g0 + gc], "gallery", normalize, out=g_buf)
        kk = min(k, g_blk.shape[0])
        for q0 in range(0, n_q, qc):
            q_blk = q_all[q0 : q0 + qc] if q_small else _normalized(q[q0 : q0 + qc], "query", normalize)
            block = buf[: q_blk.shape[0] * g_blk.shape[0]].view(q_blk.shape[0], g_blk.shape[0])
            torch.matmul(q_blk, g_blk.T, out=block)  # [q_chunk, g_chunk]
            rows = slice(q0, q0 + q_blk.shape[0])
            if g0 < k:  # the running top-k is still filling: every row takes the block's top-k
                vals, idx = _block_topk(block, kk)
                _merge(best_s, best_i, rows, vals, idx + g0, k)
            else:
                _merge_pruned(block, best_s, best_i, rows, g0, k)
    kk = min(k, n_g)
    return best_s[:, :kk].cpu().numpy(), best_i[:, :kk].cpu().numpy()


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, rows, vals: torch.Tensor, idx: torch.Tensor, k: int) -> None:
    """Merge candidate (score, gallery index) columns into the running top-k of ``rows``."""
    import torch

    cand_s = torch.cat([best_s[rows], vals], dim=1)
    cand_i = torch.cat([best_i[rows], idx], dim=1)
    # Unfilled slots (-inf, -1) sort last: -inf loses to any finite score.
    best_s[rows], best_i[rows] = _lexsorted_topk(cand_s, cand_i, k)


def _merge_pruned(
    block: torch.Tensor, best_s: torch.Tensor, best_i: torch.Tensor, rows: slice, g0: int, k: int
) -> None:
    """Merge a score block into rows that already hold a full top-k, touching only what can change.

    Exact pruning: a row's current top-k holds k scores >= its k-th best, all at lower
    gallery indices than this block, so a score here can enter only if it is *strictly*
    greater than the k-th best. One max pass over runs of ``_GROUP`` columns (while the
    block is still in cache) finds the runs holding such scores; only their scores above
    the threshold are merged. After the first few blocks a block costs its matrix product
    plus that pass: the expected number of new top-k entries falls as k / blocks seen.
    """
    import torch

    n, w = block.shape
    kth = best_s[rows, k - 1]
    m = _GROUP if w % _GROUP == 0 else w  # a ragged block is one run per row
    runs = block.view(n, w // m, m)
    run_max = runs.amax(dim=2)
    pair_row, pair_run = torch.nonzero(run_max > kth[:, None], as_tuple=True)
    if pair_row.numel() == 0:
        return
    hit, runs_hit = torch.unique_consecutive(pair_row, return_counts=True)
    many = int(runs_hit.max()) > k  # each hit run holds at least one new score
    if not many:
        # Scores above the threshold inside the hit runs, in row-major (row, column) order.
        cand = runs[pair_row, pair_run]  # [pairs, m]
        p, col = torch.nonzero(cand > kth[pair_row, None], as_tuple=True)
        row, vals, idx = pair_row[p], cand[p, col], pair_run[p] * m + col + g0
        counts = torch.unique_consecutive(row, return_counts=True)[1]  # every hit row has one
        width = int(counts.max())
        many = width > k
    if many:
        # Some row gains more than k scores (early blocks; a gallery sorted by similarity):
        # those rows' own block top-k is cheaper than sorting all their new scores.
        every_row = hit.numel() == n
        sel = slice(None) if every_row else hit  # a slice keeps the whole block a view, not a copy
        top_s, top_i = _block_topk(block[sel], min(k, w), run_max[sel] if m == _GROUP else None)
        _merge(best_s, best_i, rows if every_row else hit + rows.start, top_s, top_i + g0, k)
        return
    # Lay each row's new scores out in a padded [hit rows, width] matrix (-inf pads lose).
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(row.numel(), device=row.device) - torch.repeat_interleave(starts, counts)
    line = torch.repeat_interleave(torch.arange(hit.numel(), device=row.device), counts)
    pad_s = torch.full((hit.numel(), width), float("-inf"), device=block.device)
    pad_i = torch.full((hit.numel(), width), -1, dtype=torch.long, device=block.device)
    pad_s[line, slot], pad_i[line, slot] = vals, idx
    _merge(best_s, best_i, hit + rows.start, pad_s, pad_i, k)


def _rank_faiss(
    q: torch.Tensor,
    g: torch.Tensor,
    k: int,
    normalize: bool,
    index_type: str,
    chunk_size: int | None,
    nprobe: int | None,
    ef_search: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError as err:  # optional dependency
        raise CnClipLoraError(f"use_faiss=True needs faiss; {FAISS_HINT}") from err

    def prep(x: torch.Tensor, name: str) -> np.ndarray:
        return np.ascontiguousarray(_normalized(x.cpu(), name, normalize).numpy(), dtype=np.float32)

    n_g, dim = g.shape
    kk = min(k, n_g)
    step = chunk_size or 65536
    if index_type == FaissIndex.FLAT:
        index = faiss.IndexFlatIP(dim)
    elif index_type == FaissIndex.HNSW:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(ef_search or 128, kk)
    else:  # "ivf" (checked by `rank`)
        nlist = max(1, min(int(4 * np.sqrt(n_g)), n_g // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # A strided sample, so a gallery sorted by anything still trains on its whole range.
        index.train(prep(g[:: max(1, n_g // max(39 * nlist, 10_000))], "gallery"))
        index.nprobe = min(nlist, nprobe or max(1, nlist // 4))
    for g0 in range(0, n_g, step):
        index.add(prep(g[g0 : g0 + step], "gallery"))
    scores, indices = index.search(prep(q, "query"), kk)
    # Approximate indexes may return fewer than k hits (index -1); give them -inf so they
    # sort last and `assign` ignores them.
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    indices = indices.astype(np.int64)
    # Same order convention as the exact path within the returned set.
    order = np.lexsort((np.where(indices < 0, n_g, indices), -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(indices, order, -1)


def rank(
    query_embeds,
    gallery_embeds,
    k: int,
    *,
    chunk_size: int | None = None,
    query_chunk_size: int | None = None,
    use_faiss: bool = False,
    index_type: FaissIndex | str = FaissIndex.FLAT,
    normalize: bool = True,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-k gallery items per query by cosine similarity.

    The default path is exact and deterministic: scores descend, ties go to the lower
    gallery index. ``k`` larger than the gallery returns the whole gallery, ranked.

    Args:
        query_embeds: ``[Q, D]`` numpy array or torch tensor, any float dtype (computed in float32).
        gallery_embeds: ``[G, D]`` array or tensor. The exact path runs on the gallery's
            device, so CUDA tensors are ranked on the GPU; results always come back as numpy.
        k: how many results per query (> 0).
        chunk_size: gallery rows per block; default keeps a block at 16 MB of scores (64 MB
            on a GPU).
        query_chunk_size: query rows per block; default 2,048.
        use_faiss: search a faiss index instead of the exact torch path (needs the
            ``faiss`` extra). The index holds its own float32 copy of the gallery.
        index_type: with ``use_faiss``: ``"flat"`` is exact (scores match the torch path
            to ~1e-5; among tied items faiss may return a different subset at the k-th
            place). ``"hnsw"`` (graph, M=32) and ``"ivf"`` (``~4 * sqrt(G)`` clusters) are
            approximate, worth it only for galleries of millions: on unstructured random
            vectors HNSW keeps ~1.0 recall@10 against exact and IVF ~0.85 with the default
            ``nprobe`` (0.95+ at half the clusters); real, clustered embeddings fare better.
        normalize: L2-normalise both sides first; pass ``False`` if they already are.
        nprobe: IVF clusters visited per query; default a quarter of them. More is slower
            and closer to exact.
        ef_search: HNSW search breadth; default 128 (at least k). More is slower and
            closer to exact.

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``[Q, min(k, G)]``.

    Raises:
        ConfigError: ``k`` or a chunk size is not a positive integer.
        CnClipLoraError: empty gallery, dimension mismatch, non-finite values, faiss missing.
    """
    import torch

    q, g = _check_inputs(query_embeds, gallery_embeds, k)
    for name, value in (("chunk_size", chunk_size), ("query_chunk_size", query_chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    k = min(int(k), g.shape[0])  # before anything is allocated: a huge --top_k is the whole gallery
    if q.shape[0] == 0:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    index_type = parse_choice(FaissIndex, index_type, "index_type")
    if use_faiss:
        return _rank_faiss(q, g, k, normalize, index_type, chunk_size, nprobe, ef_search)
    with torch.no_grad():
        return _rank_exact(q, g, k, chunk_size, query_chunk_size, normalize)


def _best_per_row(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    s = np.where(indices >= 0, scores, -np.inf)
    # Highest score first, then the lowest gallery index, like `rank`.
    order = np.lexsort((indices, -s), axis=-1)[:, 0]
    best = indices[np.arange(len(indices)), order]
    bad = np.nonzero(~np.isfinite(s[np.arange(len(s)), order]))[0]
    if bad.size:
        raise CnClipLoraError(f"query {int(bad[0])} has no valid candidate to assign")
    return best


def _dense_matching(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one exact solver of a dense cost matrix (rows, columns of the minimum-cost matching);
    ``inf`` marks a forbidden pair, and a matrix without a full matching raises ``ValueError``."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost)


def assign(
    scores,
    indices,
    method: Assign | str = Assign.ARGMAX,
    n_gallery: int | None = None,
) -> np.ndarray:
    """Pick one gallery item per query from its ranked candidates.

    ``"argmax"`` takes each query's best candidate; several queries may get the same
    image. ``"hungarian"`` gives every query a *different* image, maximising the total
    similarity over the candidates (``scipy.optimize.linear_sum_assignment``; the sparse
    LAPJVsp solver when the dense cost matrix would be large). It helps when each query is
    known to have its own target, and needs enough candidates: raise ``top_k`` if no
    one-to-one choice exists within them.

    Args:
        scores: ``[Q, K]`` candidate scores from :func:`rank`.
        indices: ``[Q, K]`` candidate gallery indices (negative entries are ignored).
        method: ``"argmax"`` or ``"hungarian"``.
        n_gallery: gallery size, to reject an impossible one-to-one request up front.

    Returns:
        ``[Q]`` int64 gallery indices.
    """
    scores = np.asarray(scores, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise CnClipLoraError(
            f"scores {scores.shape} and indices {indices.shape} must be 2-D arrays of the same shape"
        )
    method = parse_choice(Assign, method, "assignment method")
    n_q = scores.shape[0]
    if n_q == 0:
        return np.zeros(0, dtype=np.int64)
    if scores.shape[1] == 0:
        raise CnClipLoraError("there are no candidates to assign (top-k of width 0)")
    if method == "argmax":
        return _best_per_row(scores, indices)
    if n_gallery is not None and n_q > n_gallery:
        raise CnClipLoraError(
            f"one-to-one assignment is impossible: {n_q} queries but only {n_gallery} gallery images; "
            "use argmax assignment"
        )
    valid = (indices >= 0) & np.isfinite(scores)
    rows, pos = np.nonzero(valid)
    cols_global, cols = np.unique(indices[rows, pos], return_inverse=True)
    n_cols = cols_global.size
    hint = "raise --top_k or use argmax assignment"
    if n_q > n_cols:
        raise CnClipLoraError(
            f"one-to-one assignment needs at least as many distinct candidate images as queries: "
            f"{n_q} queries share {n_cols} candidates; {hint}"
        )
    weights = scores[rows, pos]
    try:
        if n_q * n_cols <= _DENSE_ASSIGN_LIMIT:
            cost = np.full((n_q, n_cols), np.inf)
            # A query listing the same image twice keeps its better score.
            np.minimum.at(cost, (rows, cols), -weights)
            r, c = _dense_matching(cost)
        else:
            from scipy.sparse import csr_array
            from scipy.sparse.csgraph import min_weight_full_bipartite_matching

            # LAPJVsp needs non-zero weights; shifting every edge by the same constant keeps
            # the optimum of a full matching (each query contributes exactly one edge).
            # Duplicate (row, col) entries are summed by csr, so keep the best per pair first.
            order = np.lexsort((-weights, cols, rows))
            keep = np.ones(order.size, dtype=bool)
            keep[1:] = (np.diff(rows[order]) != 0) | (np.diff(cols[order]) != 0)
            sel = order[keep]
            shifted = weights[sel].max() - weights[sel] + 1.0
            graph = csr_array((shifted, (rows[sel], cols[sel])), shape=(n_q, n_cols))
            r, c = min_weight_full_bipartite_matching(graph)
    except ValueError as err:
        raise CnClipLoraError(
            f"no one-to-one assignment exists within the candidates (some queries compete for the "
            f"same few images); {hint}"
        ) from err
    out = np.empty(n_q, dtype=np.int64)
    out[r] = cols_global[c]
    return out


def assign_one_to_one(
    query_embeds,
    gallery_embeds,
    *,
    dense_limit_bytes: int = DENSE_ONE_TO_ONE_BYTES,
    start_k: int = 32,
    normalize: bool = True,
) -> np.ndarray:
    """Give every query a *different* gallery image, maximising the total cosine similarity.

    Unlike :func:`assign` on a ``--top_k`` candidate list, this never gives up while a one-to-one
    choice exists (at least as many images as queries):

    * when the full ``[Q, G]`` cost matrix (float64) fits in ``dense_limit_bytes`` (default
      :data:`DENSE_ONE_TO_ONE_BYTES`, 512 MB), it is solved exactly over every pair
      (``scipy.optimize.linear_sum_assignment``);
    * otherwise each query's candidates start at its ``start_k`` best images and double until
      the sparse solver finds a complete matching, which is the optimum over those candidates.
      With ``Q`` candidates per query a complete matching always exists (each query still has a
      free image after the other ``Q - 1`` took one), so the width stops at ``min(Q, G)``; memory
      is ``O(Q * width)``, never the full matrix.

    Args:
        query_embeds: ``[Q, D]`` array or tensor.
        gallery_embeds: ``[G, D]`` array or tensor, ``G >= Q``.
        dense_limit_bytes: largest dense cost matrix solved directly.
        start_k: first candidate width above the dense limit.
        normalize: L2-normalise both sides first.

    Returns:
        ``[Q]`` int64 gallery indices, all distinct.
    """
    import torch

    q, g = _check_inputs(query_embeds, gallery_embeds, 1)
    n_q, n_g = q.shape[0], g.shape[0]
    if n_q == 0:
        return np.zeros(0, dtype=np.int64)
    if n_q > n_g:
        raise CnClipLoraError(
            f"one-to-one assignment is impossible: {n_q} queries but only {n_g} gallery images; use argmax assignment"
        )
    if n_q * n_g * 8 <= dense_limit_bytes:
        with torch.no_grad():
            qn = _normalized(q.cpu(), "query", normalize)
            gn = _normalized(g.cpu(), "gallery", normalize)
            cost = -(qn.double() @ gn.double().T).numpy()
        r, c = _dense_matching(cost)
        out = np.empty(n_q, dtype=np.int64)
        out[r] = c
        return out
    width = max(1, min(start_k, n_g))
    while True:
        scores, indices = rank(q, g, width, normalize=normalize)
        try:
            return assign(scores, indices, "hungarian", n_gallery=n_g)
        except CnClipLoraError:
            if width >= min(n_q, n_g):  # cannot happen: Q candidates per query always match
                raise
            width = min(2 * width, n_q, n_g)
