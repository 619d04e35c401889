"""Retrieval: merged adapters, datasets.map == direct forward, cache hits and invalidation, outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cnclip_lora.adapter.record import Preprocessing
from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.errors import ConfigError
from cnclip_lora.inference.embed import embed_images, embed_texts
from cnclip_lora.inference.model import RetrievalModel
from cnclip_lora.inputs.images import preprocess_images
from cnclip_lora.inputs.text import tokenize_titles
from cnclip_lora.modeling import get_image_embeds, get_text_embeds, load_model_and_processor
from cnclip_lora.retrieve.run import (
    EvaluateArguments,
    RetrieveArguments,
    evaluate_retrieval,
    retrieve,
    write_submission,
)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "out"
    argv = []
    for k, v in {
        "model_name_or_path": tiny_model_dir,
        "data_dir": demo_dir,
        "output_dir": out,
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "val_size": 0,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
    }.items():
        argv += [f"--{k}", str(v)]
    train_from_argv(argv)
    return out


def _gallery(demo_dir: Path) -> list[str]:
    train_names = set(pd.read_csv(demo_dir / "train.csv", sep="\t")["path"])
    return sorted(p.name for p in (demo_dir / "image").iterdir() if p.name not in train_names)


def test_map_embedding_equals_a_direct_batched_forward(tiny_model_dir, demo_dir):
    model, processor = load_model_and_processor(str(tiny_model_dir))
    model.eval()
    paths = [demo_dir / "image" / n for n in _gallery(demo_dir)[:10]]
    titles = list(pd.read_csv(demo_dir / "test_query.csv")["title"][:10])
    prep = Preprocessing(train_flip="always")
    via_map = embed_images(model, processor.image_processor, paths, preprocessing=prep, batch_size=4)
    txt_map = embed_texts(model, processor.tokenizer, titles, preprocessing=Preprocessing(), batch_size=3)
    with torch.no_grad():
        direct = get_image_embeds(model, preprocess_images(paths, processor.image_processor, flips=True))
        direct_t = get_text_embeds(model, **tokenize_titles(titles, processor.tokenizer, 52))
    np.testing.assert_allclose(via_map, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(txt_map, torch.nn.functional.normalize(direct_t, dim=-1).numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(via_map, axis=1), 1.0, atol=1e-5)


def test_merged_retrieval_model_equals_unmerged_peft(adapter_dir, tiny_model_dir):
    from peft import PeftModel

    loaded = RetrievalModel.from_pretrained(str(tiny_model_dir), str(adapter_dir), device="cpu")
    merged, processor, prep = loaded.model, loaded.processor, loaded.preprocessing
    base, _ = load_model_and_processor(str(tiny_model_dir))
    unmerged = PeftModel.from_pretrained(base, adapter_dir).eval()
    enc = tokenize_titles(["红色条纹连衣裙", "黑色波点衬衫"], processor.tokenizer, prep.max_length)
    pixels = torch.randn(2, 3, *([processor.image_processor.size["height"]] * 2))
    with torch.no_grad():
        assert torch.allclose(get_text_embeds(merged, **enc), get_text_embeds(unmerged, **enc), atol=1e-5)
        assert torch.allclose(get_image_embeds(merged, pixels), get_image_embeds(unmerged, pixels), atol=1e-5)
    assert prep.train_flip == "random" and not prep.inference_flip  # the default: no flip at retrieval


def test_cache_hit_reuses_and_fingerprint_changes_invalidate(tiny_model_dir, demo_dir, tmp_path):
    model, processor = load_model_and_processor(str(tiny_model_dir))
    paths = [str(demo_dir / "image" / n) for n in _gallery(demo_dir)[:6]]
    prep = Preprocessing()
    cached = RetrievalModel(model, processor, prep, cache_dir=tmp_path, source=str(tiny_model_dir))
    fp = cached.fingerprint("image", paths)
    first = cached.encode_images(paths)
    assert list(tmp_path.glob(f"embed-{fp}*.arrow"))
    # Perturb the model: a cache hit must return the stored embeddings without running it.
    with torch.no_grad():
        model.visual_projection.weight.mul_(-1.0)
    again = cached.encode_images(paths)
    np.testing.assert_array_equal(first, again)
    # Every input of the key changes it.
    other_prep = RetrievalModel(
        model, processor, Preprocessing(train_flip="always"), cache_dir=tmp_path, source=str(tiny_model_dir)
    ).fingerprint("image", paths)
    fewer = cached.fingerprint("image", paths[:-1])
    assert len({fp, other_prep, fewer}) == 3
    fresh = cached.encode_images(paths[:-1])
    np.testing.assert_allclose(fresh, -first[:-1], atol=1e-5)  # recomputed with the flipped projection


def test_fingerprint_follows_adapter_weights_and_image_files(adapter_dir, tiny_model_dir, demo_dir, tmp_path):
    import shutil

    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    image_copy = tmp_path / "img.jpg"
    shutil.copy(demo_dir / "image" / _gallery(demo_dir)[0], image_copy)
    model, processor = load_model_and_processor(str(tiny_model_dir))

    def key(a):
        return RetrievalModel(
            model, processor, Preprocessing(), source=str(tiny_model_dir), adapter_dir=str(a)
        ).fingerprint("image", [str(image_copy)])

    before = key(copy)
    assert key(copy) == before
    weights = load_file(copy / "adapter_model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, copy / "adapter_model.safetensors")
    changed_adapter = key(copy)
    assert changed_adapter != before
    st = os.stat(image_copy)
    os.utime(image_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert key(copy) != changed_adapter


def test_retrieve_writes_a_valid_submission_and_topk(adapter_dir, tiny_model_dir, demo_dir, tmp_path):
    args = RetrieveArguments(
        model_name_or_path=str(tiny_model_dir),
        adapter=str(adapter_dir),
        data_dir=str(demo_dir),
        output=str(tmp_path / "sub" / "submit.csv"),
        top_k=5,
        topk_output=str(tmp_path / "topk.csv"),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    result = retrieve(args)
    sample = pd.read_csv(demo_dir / "sample_submit.csv")
    sub = pd.read_csv(tmp_path / "sub" / "submit.csv")
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["title"]) == list(sample["title"])  # row order kept
    gallery = set(_gallery(demo_dir))
    train_names = set(pd.read_csv(demo_dir / "train.csv", sep="\t")["path"])
    assert sub["path"].notna().all() and set(sub["path"]) <= gallery and not set(sub["path"]) & train_names
    topk = pd.read_csv(tmp_path / "topk.csv")
    assert list(topk.columns) == ["query", "rank", "path", "score"]
    assert len(topk) == len(sample) * 5
    assert (topk.groupby("query")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    assert list(topk[topk["rank"] == 1]["path"]) == list(sub["path"])  # argmax = rank 1
    assert result.metrics["gallery_size"] == len(gallery)
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary left behind


def test_hungarian_never_assigns_an_image_twice(adapter_dir, tiny_model_dir, demo_dir, tmp_path):
    args = RetrieveArguments(
        model_name_or_path=str(tiny_model_dir),
        adapter=str(adapter_dir),
        data_dir=str(demo_dir),
        output=str(tmp_path / "submit.csv"),
        top_k=20,
        assign="hungarian",
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    retrieve(args)
    sub = pd.read_csv(tmp_path / "submit.csv")
    assert sub["path"].is_unique


def test_evaluate_reports_both_directions_with_gallery_size(tiny_model_dir, demo_dir, tmp_path):
    for split in ("val", "test"):
        metrics = evaluate_retrieval(
            EvaluateArguments(
                model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), split=split, cache_dir="", device="cpu"
            )
        )
        for key in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_MR", "i2t_R@1", "i2t_MR", "gallery_size"):
            assert f"{split}_{key}" in metrics
        assert metrics[f"{split}_t2i_R@1"] <= metrics[f"{split}_t2i_R@5"] <= metrics[f"{split}_t2i_R@10"]
    assert metrics["test_gallery_size"] == len(_gallery(demo_dir))


def test_submission_rejects_a_row_count_mismatch(tmp_path):
    from cnclip_lora.errors import CnClipLoraError

    with pytest.raises(CnClipLoraError, match="2 rows but there are 1 queries"):
        write_submission(tmp_path / "s.csv", pd.DataFrame({"title": ["a", "b"], "path": ["", ""]}), ["a"], ["x.jpg"])
    assert not (tmp_path / "s.csv").exists()


def test_retrieval_arguments_validate():
    with pytest.raises(ConfigError, match="assign"):
        RetrieveArguments(model_name_or_path="m", assign="greedy")
    with pytest.raises(ConfigError, match="top_k"):
        RetrieveArguments(model_name_or_path="m", top_k=0)
    with pytest.raises(TypeError, match="RetrieveArguments"):
        retrieve(EvaluateArguments(model_name_or_path="m"))


def test_retrieve_with_a_flat_faiss_index_matches_exact_search(adapter_dir, tiny_model_dir, demo_dir, tmp_path):
    pytest.importorskip("faiss", reason="the faiss extra is part of `make test`'s install")
    common = dict(
        model_name_or_path=str(tiny_model_dir),
        adapter=str(adapter_dir),
        data_dir=str(demo_dir),
        top_k=5,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    exact = retrieve(RetrieveArguments(output=str(tmp_path / "exact.csv"), **common))
    flat = retrieve(
        RetrieveArguments(output=str(tmp_path / "faiss.csv"), use_faiss=True, faiss_index="flat", **common)
    )
    np.testing.assert_allclose(flat.scores, exact.scores, atol=1e-5)
    assert pd.read_csv(tmp_path / "faiss.csv").equals(pd.read_csv(tmp_path / "exact.csv"))


def test_evaluate_answers_file_outside_the_data_folder_is_validated_like_the_default(
    tiny_model_dir, demo_dir, tmp_path
):
    import shutil

    from cnclip_lora.errors import DataError

    common = dict(
        model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), split="test", cache_dir="", device="cpu"
    )
    elsewhere = tmp_path / "answers.csv"
    shutil.copy(demo_dir / "test_answers.csv", elsewhere)
    elsewhere_metrics = evaluate_retrieval(EvaluateArguments(answers=str(elsewhere), **common))
    assert elsewhere_metrics == evaluate_retrieval(EvaluateArguments(**common))
    train_image = pd.read_csv(demo_dir / "train.csv", sep="\t")["path"][0]
    elsewhere.write_text(f"query,path\n0,{train_image}\n", encoding="utf-8")
    with pytest.raises(DataError, match="answers.csv"):
        evaluate_retrieval(EvaluateArguments(answers=str(elsewhere), **common))
    with pytest.raises(DataError, match="answers file not found"):
        evaluate_retrieval(EvaluateArguments(answers=str(tmp_path / "missing.csv"), **common))


def test_default_embedding_cache_is_shared_across_working_directories(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """No ``--cache_dir``: embeddings go to HF_DATASETS_CACHE/cnclip_lora/embeddings, not into the
    working directory, and a run from another directory reuses them (by absolute image paths)."""
    import datasets

    from cnclip_lora.utils.caches import cache_usage

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    relative_data = os.path.relpath(demo_dir, tmp_path / "a")
    runs = []
    for cwd in ("a", "b/c"):
        (tmp_path / cwd).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / cwd)
        data = relative_data if cwd == "a" else str(demo_dir)  # same images, named two ways
        runs.append(
            evaluate_retrieval(
                EvaluateArguments(model_name_or_path=str(tiny_model_dir), data_dir=data, split="val", device="cpu")
            )
        )
        assert not list((tmp_path / cwd).iterdir())  # nothing written where the command ran
    usage = {u.kind: u for u in cache_usage()}
    assert usage["embeddings"].path == tmp_path / "hf" / "cnclip_lora" / "embeddings"
    # One image file and one text file (with their datasets sidecars); the second run wrote none.
    assert len(list(usage["embeddings"].path.glob("embed-*.arrow"))) == 2
    assert runs[0] == runs[1]


def test_fingerprint_keys_the_loaded_commit_and_dtype(tiny_model_dir):
    model, processor = load_model_and_processor(str(tiny_model_dir))

    def key(model_commit="a" * 40, dtype=torch.float32):
        model.config._commit_hash = model_commit
        model.to(dtype)
        return RetrievalModel(
            model, processor, Preprocessing(), source="OFA-Sys/chinese-clip-vit-huge-patch14"
        ).fingerprint("text", ["标题"])

    assert key(model_commit="a" * 40) != key(model_commit="b" * 40)  # "main" moved on the Hub
    assert key(dtype=torch.float32) != key(dtype=torch.bfloat16)
    assert key(model_commit="a" * 40, dtype=torch.float32) == key(model_commit="a" * 40, dtype=torch.float32)


def test_unwritable_default_embedding_cache_warns_and_still_retrieves(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch, caplog
):
    import datasets

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(blocker / "hf"))
    args = dict(model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), split="val", device="cpu")
    with caplog.at_level("WARNING"):
        metrics = evaluate_retrieval(EvaluateArguments(**args))
    assert metrics["val_gallery_size"] > 0
    assert any("cannot write the embeddings cache" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="cannot write the embeddings cache in .*not-a-folder/mine"):
        evaluate_retrieval(EvaluateArguments(**args, cache_dir=str(blocker / "mine")))


def test_retrieve_metrics_come_from_full_gallery_ranks_whatever_top_k(adapter_dir, tiny_model_dir, demo_dir, tmp_path):
    common = dict(
        model_name_or_path=str(tiny_model_dir),
        adapter=str(adapter_dir),
        data_dir=str(demo_dir),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    runs = [retrieve(RetrieveArguments(output=str(tmp_path / f"k{k}.csv"), top_k=k, **common)).metrics for k in (1, 5)]
    t2i = [{k: v for k, v in m.items() if k.startswith("test_t2i_")} for m in runs]
    assert t2i[0] and t2i[0] == t2i[1]
    ref = evaluate_retrieval(EvaluateArguments(split="test", **common))
    assert t2i[0] == {k: ref[k] for k in t2i[0]}
