"""RetrievalEvaluator: the one scoring path (Trainer, `cnclip-lora evaluate`, report), against naive references."""

from __future__ import annotations

import numpy as np
import pytest

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inference.evaluator import RetrievalEvaluator


def _naive(sims: np.ndarray, positives: list[set[int]], ks=(1, 5, 10)) -> dict[str, float]:
    """Recall from a full similarity matrix: a hit at K when a positive scores among the K best
    (ties counted against the true image, as the package's full-gallery ranks do)."""
    out = {}
    for k in ks:
        hits = 0
        for row, pos in zip(sims, positives):
            order = sorted(range(len(row)), key=lambda j: (-row[j], j in pos))[:k]
            hits += bool(pos & set(order))
        out[f"R@{k}"] = 100.0 * hits / len(sims)
    out["MR"] = sum(out[f"R@{k}"] for k in ks) / len(ks)
    return out


def _evaluator(labels, n_gallery, **kwargs) -> RetrievalEvaluator:
    return RetrievalEvaluator(
        [f"t{i}" for i in range(len(labels))], labels, [f"{j}.jpg" for j in range(n_gallery)], processor=None, **kwargs
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_score_equals_naive_recall_both_directions(seed):
    rng = np.random.default_rng(seed)
    n_g, n_q = 30, 24
    gallery = _unit(rng.standard_normal((n_g, 16)))
    labels = rng.integers(0, 12, n_q).tolist()  # several titles per image: i2t has several positives
    queries = _unit(gallery[labels] + 0.9 * rng.standard_normal((n_q, 16)))
    got = _evaluator(labels, n_g, name="val").score(queries, gallery)

    t2i = _naive(queries @ gallery.T, [{g} for g in labels])
    captioned = sorted(set(labels))
    i2t = _naive(gallery[captioned] @ queries.T, [{q for q, g in enumerate(labels) if g == img} for img in captioned])
    want = {**{f"val_t2i_{k}": v for k, v in t2i.items()}, **{f"val_i2t_{k}": v for k, v in i2t.items()}}
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-4)
    assert got["val_gallery_size"] == n_g and got["val_queries"] == n_q
    assert set(got) == set(want) | {"val_gallery_size", "val_queries"}


def test_bare_names_custom_cutoffs_and_no_i2t():
    gallery = np.eye(4, dtype=np.float32)
    got = _evaluator([0, 1, 2, 3], 4, ks=(1, 2), i2t=False).score(gallery * 2.0, gallery)
    assert got == {"t2i_R@1": 100.0, "t2i_R@2": 100.0, "t2i_MR": 100.0, "gallery_size": 4, "queries": 4}


def test_ties_count_against_the_true_image():
    gallery = np.asarray([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # images 0 and 1 embed the same
    got = _evaluator([0, 1, 2], 3, ks=(1, 2), i2t=False).score(gallery.copy(), gallery)
    assert got["t2i_R@1"] == pytest.approx(100 / 3, abs=1e-3) and got["t2i_R@2"] == 100.0


def test_first_keeps_the_gallery_and_drops_later_queries():
    ev = _evaluator([3, 1, 2], 5)
    short = ev.first(2)
    assert (short.titles, short.labels, short.gallery_paths) == (["t0", "t1"], [3, 1], ev.gallery_paths)
    assert ev.first(None) is ev and ev.first(9) is ev


def test_non_finite_embeddings_are_refused():
    gallery = np.eye(3, dtype=np.float32)
    queries = gallery.copy()
    queries[1, 0] = np.nan
    with pytest.raises(CnClipLoraError, match="NaN or infinite"):
        _evaluator([0, 1, 2], 3).score(queries, gallery)


@pytest.mark.parametrize("labels, match", [([0, 1], "2 labels for 3 titles"), ([0, 1, 4], "label 4 is outside")])
def test_labels_must_match_titles_and_gallery(labels, match):
    with pytest.raises(ConfigError, match=match):
        RetrievalEvaluator(["a", "b", "c"], labels, ["0.jpg", "1.jpg", "2.jpg"], processor=None)


def test_called_with_a_model_embeds_like_the_embedding_functions(tiny_model_dir, demo_dir):
    """``evaluator(model)`` scores the model's own embeddings, with the recorded preprocessing,
    and leaves a training model in training mode."""
    import pandas as pd
    from transformers import AutoProcessor, ChineseCLIPModel

    from cnclip_lora.adapter.record import Preprocessing
    from cnclip_lora.inference.embed import embed_images, embed_texts

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = ChineseCLIPModel.from_pretrained(tiny_model_dir)
    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(12)
    paths = sorted(str(demo_dir / "image" / p) for p in set(rows["path"]))
    labels = [paths.index(str(demo_dir / "image" / p)) for p in rows["path"]]
    prep = Preprocessing(max_length=24, train_flip="always")
    ev = RetrievalEvaluator(list(rows["title"]), labels, paths, processor, prep, batch_size=5)
    model.train()
    got = ev(model)
    assert model.training
    queries = embed_texts(model, processor.tokenizer, list(rows["title"]), preprocessing=prep)
    gallery = embed_images(model, processor.image_processor, paths, preprocessing=prep)
    assert got == ev.score(queries, gallery)
    flipped = embed_images(model, processor.image_processor, paths, preprocessing=Preprocessing())
    assert not np.allclose(flipped, gallery, atol=1e-4)  # the recorded flip was applied
