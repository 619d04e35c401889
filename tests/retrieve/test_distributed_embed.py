"""Sharded embedding and retrieval under torchrun (two CPU processes, gloo) == one process.

This file is also the worker script: ``torchrun tests/retrieve/test_distributed_embed.py MODEL DATA OUT``
runs :func:`embed_all` on every rank, so both sides of each comparison run the same code, then
``cnclip-lora retrieve`` through the CLI's ``main`` (what ``python -m cnclip_lora`` calls); one
launch serves both tests, since starting two processes costs more than the work itself.
Sizes cover an odd split (7 items: 4 + 3) and fewer items than processes (1 item: rank 1 has
nothing to embed but still joins the gather). Selected by ``pytest -k "distributed or gather"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Also run as a torchrun worker script: the shared test helpers live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import needs_gloo, run_torchrun, stray_files

SIZES = (7, 1)


def embed_all(model_dir: Path, data_dir: Path, cache_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every distributed code path of embedding: texts and images at each size, and ``evaluate``."""
    from cnclip_lora.inference.embed import embed_texts
    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    model = RetrievalModel.from_pretrained(str(model_dir), device="cpu")
    titles = [f"云思木想2019秋装新款{i}号连衣裙" for i in range(max(SIZES))]
    paths = sorted(str(p) for p in (data_dir / "image").glob("*.jpg"))[: max(SIZES)]
    out: dict[str, np.ndarray] = {}
    for n in SIZES:
        # Cached under a fixed name, so the shard files each process wrote can be inspected.
        out[f"text{n}"] = embed_texts(
            model.model,
            model.tokenizer,
            titles[:n],
            preprocessing=model.preprocessing,
            batch_size=2,
            cache_dir=cache_dir,
            fingerprint=f"text{n}",
        )
        out[f"image{n}"] = model.encode_images(paths[:n], batch_size=2)
    metrics = evaluate_retrieval(
        EvaluateArguments(
            model_name_or_path=str(model_dir),
            data_dir=str(data_dir),
            split="val",
            val_size=4,
            cache_dir="",
            device="cpu",
        )
    )
    return out, metrics


def retrieve_argv(model_dir: Path, data_dir: Path, out_dir: Path, cache_dir: str) -> list[str]:
    return [
        "retrieve",
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(data_dir),
        "--output",
        str(out_dir / "submit.csv"),
        "--topk_output",
        str(out_dir / "topk.csv"),
        "--top_k",
        "3",
        "--cache_dir",
        cache_dir,
        "--device",
        "cpu",
    ]


def _worker(model_dir: str, data_dir: str, out_dir: str) -> None:
    from cnclip_lora.commands import main
    from cnclip_lora.utils.distributed import rank_and_world

    out = Path(out_dir)
    arrays, metrics = embed_all(Path(model_dir), Path(data_dir), out / "cache")
    rank, world = rank_and_world(group_only=True)  # the group the embedding joined
    np.savez(out / f"rank{rank}.npz", **arrays)
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "metrics": metrics}))
    code = main(retrieve_argv(Path(model_dir), Path(data_dir), out / "submission", str(out / "retrieve-cache")))
    if code:
        raise SystemExit(code)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from conftest import build_dataset_dir

    # 12 pairs, 4 held out; 5 test-gallery images for 4 queries (3 + 2 and 2 + 2 per process).
    return build_dataset_dir(
        tmp_path_factory.mktemp("dist-embed") / "xfdata", n_train_images=12, n_gallery=5, n_queries=4
    )


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, data_dir, tmp_path_factory) -> Path:
    """Outputs of one two-process launch of this file's worker."""
    out = tmp_path_factory.mktemp("dist-embed-run")
    log = run_torchrun([__file__, tiny_model_dir, data_dir, out], cwd=out)
    (out / "torchrun.log").write_text(log)
    return out


def test_distributed_ranks_exit_cleanly(two_process_run):
    # The group process_info joined is the package's: destroyed at exit, so no rank aborts after its work.
    log = (two_process_run / "torchrun.log").read_text()
    assert "terminate called" not in log and "SIGABRT" not in log, log[-3000:]


@needs_gloo
def test_distributed_embed_two_processes_equal_single_process(two_process_run, tiny_model_dir, data_dir, tmp_path):
    ref, ref_metrics = embed_all(tiny_model_dir, data_dir, tmp_path / "ref-cache")
    for rank in range(2):
        info = json.loads((two_process_run / f"rank{rank}.json").read_text())
        assert info["world"] == 2
        # Every rank receives the whole result, in input order.
        got = np.load(two_process_run / f"rank{rank}.npz")
        for n in SIZES:
            for key in (f"text{n}", f"image{n}"):
                assert got[key].shape == ref[key].shape and ref[key].shape[0] == n, key
                np.testing.assert_allclose(got[key], ref[key], atol=1e-6, err_msg=key)
        assert info["metrics"] == pytest.approx(ref_metrics)
    # The work was really split: 7 titles as 4 + 3 rows; 1 title only on rank 0.
    import datasets

    cache = two_process_run / "cache"
    shard_rows = [len(datasets.Dataset.from_file(str(cache / f"embed-text7-{r}of2.arrow"))) for r in range(2)]
    assert shard_rows == [4, 3]
    assert (cache / "embed-text1-0of2.arrow").is_file() and not (cache / "embed-text1-1of2.arrow").exists()


@needs_gloo
def test_distributed_retrieve_cli_two_processes_equal_single_process(
    two_process_run, tiny_model_dir, data_dir, tmp_path
):
    from cnclip_lora.commands import main

    out2, out1 = two_process_run / "submission", tmp_path / "one"
    assert main(retrieve_argv(tiny_model_dir, data_dir, out1, "")) == 0

    # Written once, by rank 0, atomically: exactly the two requested files, no temporary leftovers.
    assert sorted(p.name for p in out2.iterdir()) == ["submit.csv", "topk.csv"] and stray_files(out2) == []
    assert (out2 / "submit.csv").read_text(encoding="utf-8") == (out1 / "submit.csv").read_text(encoding="utf-8")
    two, one = pd.read_csv(out2 / "topk.csv"), pd.read_csv(out1 / "topk.csv")
    assert two[["query", "rank", "path"]].equals(one[["query", "rank", "path"]])
    np.testing.assert_allclose(two["score"], one["score"], atol=2e-6)
    # Gallery (5 images) and queries (4 titles) were each embedded in two shards.
    cache = two_process_run / "retrieve-cache"
    assert len(list(cache.glob("embed-*-0of2.arrow"))) == 2 and len(list(cache.glob("embed-*-1of2.arrow"))) == 2


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
