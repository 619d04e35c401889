"""Ranking: 2,000 queries x 300,000 gallery x 256-d, top-10. Time vs one matrix product, memory vs a full score matrix.

Variants (each in a fresh process so its peak RSS is its own; interleaved over ``--repeats``):

* ``floor``: one ``[Q, D] @ [D, G]`` product into a pre-touched output buffer: the arithmetic
  every exact method must do, nothing else (its buffer is the full 2.4 GB score matrix).
* ``full_matrix``: the naive exact method: ``scores = q @ g.T`` (fresh 2.4 GB) + ``topk``.
* ``package``: :func:`cnclip_lora.inference.search.rank` (blocked matmul + running top-k).
* ``package_64mb``: the same with the earlier 64 MB blocks (16 M scores of 1,024 queries), which
  no longer fit the last-level cache: what the cache-sized default buys.
* ``faiss_flat``: ``rank(..., use_faiss=True)`` with the exact inner-product index (if installed).

Extra memory = peak RSS during the call minus peak RSS once the inputs exist (1.2 GB of
float64 generation temporaries are avoided: inputs are drawn in float32 in place).

    python benchmarks/rank_memory.py --repeats 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, machine_info, median_by_variant, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _inputs(a: argparse.Namespace):
    import torch

    gen = torch.Generator().manual_seed(0)
    if a.sorted_gallery:
        # Adversarial for the pruned merge: every query's similarity rises with the gallery index,
        # so every block beats every query's running top-k.
        u = torch.randn(a.dim, generator=gen)
        u /= u.norm()
        g = torch.randn(a.gallery, a.dim, generator=gen) * 0.05 + torch.linspace(0, 1, a.gallery)[:, None] * u
        q = u + torch.randn(a.queries, a.dim, generator=gen) * 0.05
        return q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    q = torch.randn(a.queries, a.dim, generator=gen)
    g = torch.randn(a.gallery, a.dim, generator=gen)
    q /= q.norm(dim=1, keepdim=True)
    g /= g.norm(dim=1, keepdim=True)
    # Queries near a known gallery row, so the result can be checked.
    q.add_(g[: a.queries] * 2.0)
    q /= q.norm(dim=1, keepdim=True)
    return q, g


def child(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    # Imports first: cnclip_lora pulls in transformers/datasets (~300 MB of code and data) that
    # are not the ranking's memory.
    from cnclip_lora.inference import search as ranking
    from cnclip_lora.inference.search import rank

    if a.child == "package_64mb":
        ranking._BLOCK_ELEMENTS, ranking._DEFAULT_QUERY_CHUNK = 16 * 1024 * 1024, 1024
    if a.child == "faiss_flat":
        import faiss  # noqa: F401
    q, g = _inputs(a)
    out = None
    if a.child == "floor":
        out = torch.empty(a.queries, a.gallery)
        out.fill_(0)  # touch every page first: the floor is arithmetic, not page faults
    # Warm-up on a slice (thread pools, kernels' first calls), as every variant gets: steady state.
    torch.matmul(q[:64], g[:4096].T)
    if a.child not in ("floor", "full_matrix"):
        rank(q[:64], g[:8192], k=a.k, **({"use_faiss": True, "index_type": "flat"} if a.child == "faiss_flat" else {}))
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if a.child == "floor":
        torch.matmul(q, g.T, out=out)
        idx = None
    elif a.child == "full_matrix":
        idx = torch.matmul(q, g.T).topk(a.k, dim=1).indices.numpy()
    else:
        kwargs = {"use_faiss": True, "index_type": "flat"} if a.child == "faiss_flat" else {}
        _, idx = rank(q, g, k=a.k, **kwargs)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "seconds": seconds,
        "extra_mb": round(peak_rss_mb() - base, 1),
        "base_rss_mb": round(base, 1),
    }
    if idx is not None and not a.sorted_gallery:  # the planted best match exists only in the default data
        result["top1_correct"] = float((torch.as_tensor(idx)[:, 0] == torch.arange(a.queries)).float().mean())
    result["torch_threads"] = torch.get_num_threads()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--gallery", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--sorted_gallery",
        action="store_true",
        help="adversarial data: similarity rises with the gallery index (defeats the pruning)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--variants", nargs="*", default=["floor", "full_matrix", "package", "package_64mb", "faiss_flat"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/rank_memory.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child_main({"variant": a.child, **child(a)})
        return

    variants = list(a.variants)
    if "faiss_flat" in variants:
        try:
            import faiss  # noqa: F401
        except ImportError:
            variants.remove("faiss_flat")
    common = [
        "--queries",
        str(a.queries),
        "--gallery",
        str(a.gallery),
        "--dim",
        str(a.dim),
        "--k",
        str(a.k),
        "--threads",
        str(a.threads),
        *(["--sorted_gallery"] if a.sorted_gallery else []),
    ]
    runs = []
    for rep in range(a.repeats):
        for name in variants:
            r = run_child(__file__, name, common)
            print(f"  repeat {rep + 1}: {name:<12} {r['seconds']:7.2f} s  extra {r['extra_mb']:8.1f} MB", flush=True)
            runs.append(r)
    med = median_by_variant(runs, "seconds")
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        med[name]["extra_mb"] = max(r["extra_mb"] for r in mine)
        if "top1_correct" in mine[0]:
            med[name]["top1_correct"] = min(r["top1_correct"] for r in mine)
    floor = med["floor"]["seconds"] if "floor" in med else None
    full_mb = a.queries * a.gallery * 4 / 2**20
    rows = []
    for name in variants:
        m = med[name]
        m["vs_floor"] = round(m["seconds"] / floor, 3) if floor else None
        rows.append(
            [
                name,
                round(m["seconds"], 2),
                m["vs_floor"] or "-",
                round(m["extra_mb"]),
                round(m["extra_mb"] / full_mb, 3),
                round(m["peak_rss_mb"]),
                m.get("top1_correct", "-"),
            ]
        )
    table = print_table(
        rows, ["variant", "seconds (median)", "x floor", "extra MB (max)", "x full matrix", "peak RSS MB", "top-1 ok"]
    )
    setup = {k: getattr(a, k) for k in ("queries", "gallery", "dim", "k", "repeats", "threads", "sorted_gallery")}
    setup["full_score_matrix_mb"] = round(full_mb, 1)
    write_json(
        a.out,
        {
            "benchmark": "rank_memory",
            "machine": machine_info(),
            "setup": setup,
            "command": " ".join(map(shlex.quote, sys.argv)),
            "results": med,
            "runs": runs,
            "table": table,
        },
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
