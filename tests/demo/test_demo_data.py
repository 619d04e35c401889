"""Tests for the synthetic demo data generator (cnclip_lora.demo.data)."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnclip_lora.demo import data as dd
from cnclip_lora.demo.data import DOMAINS, get_domain, make_demo_data
from cnclip_lora.errors import ConfigError

SMALL = dict(n_train=20, n_queries=10, n_distractors=15)
UUID4_JPG = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.jpg$")


@pytest.fixture(scope="module")
def clothing(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clothing")
    return out, make_demo_data(out, seed=0, **SMALL)


@pytest.fixture(scope="module")
def homeware(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("homeware")
    return out, make_demo_data(out, seed=0, domain="homeware", **SMALL)


def _rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f, delimiter=delimiter))
    return header, rows


def _check_layout(out: Path, counts: dict) -> None:
    """Everything the competition layout promises, plus the answer key's consistency."""
    images = sorted(p.name for p in (out / "image").iterdir())
    assert len(images) == SMALL["n_train"] + SMALL["n_queries"] + SMALL["n_distractors"] == counts["images"]
    assert all(UUID4_JPG.match(name) for name in images), images[:3]

    raw = (out / "train.csv").read_text(encoding="utf-8")
    assert raw.splitlines()[0] == "title\tpath"
    header, train = _rows(out / "train.csv", "\t")
    assert len(train) == SMALL["n_train"] == counts["train"]
    assert all(len(r) == 2 and UUID4_JPG.match(r[1]) and (out / "image" / r[1]).is_file() for r in train)
    assert len({r[1] for r in train}) == len(train)  # each pair has its own picture

    assert (out / "test_query.csv").read_text(encoding="utf-8").splitlines()[0] == "title"
    header, queries = _rows(out / "test_query.csv")
    assert header == ["title"] and all(len(r) == 1 for r in queries)
    assert len(queries) == SMALL["n_queries"] == counts["queries"]

    header, submit = _rows(out / "sample_submit.csv")
    assert header == ["title", "path"]
    assert [r[0] for r in submit] == [r[0] for r in queries]  # same row order as test_query
    assert all(r[1] == "" for r in submit)

    header, answers = _rows(out / "test_answers.csv")
    assert header == ["query", "path"]
    assert [int(r[0]) for r in answers] == list(range(len(queries)))
    train_paths = {r[1] for r in train}
    gallery = set(images) - train_paths
    targets = [r[1] for r in answers]
    assert len(set(targets)) == len(targets)  # one distinct target per query
    assert set(targets) <= gallery and not set(targets) & train_paths
    assert len(gallery) == counts["gallery"] == SMALL["n_queries"] + SMALL["n_distractors"]
    assert len(gallery - set(targets)) == counts["distractors"] == SMALL["n_distractors"]

    # The way users (and pandas-based readers) load these files.
    assert list(pd.read_csv(out / "train.csv", sep="\t").columns) == ["title", "path"]
    assert list(pd.read_csv(out / "test_query.csv").columns) == ["title"]


def test_clothing_layout(clothing):
    _check_layout(*clothing)


def test_homeware_layout(homeware):
    _check_layout(*homeware)


def test_images_are_rgb_jpegs_of_requested_size(clothing, tmp_path):
    out, _ = clothing
    for path in sorted((out / "image").iterdir())[:10]:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (224, 224))
    make_demo_data(tmp_path, n_train=1, n_queries=1, n_distractors=0, image_size=96)
    for path in (tmp_path / "image").iterdir():
        with Image.open(path) as im:
            assert im.size == (96, 96)


def test_same_seed_gives_identical_bytes_other_seed_differs(clothing, tmp_path):
    out, _ = clothing
    again = make_demo_data(tmp_path / "again", seed=0, **SMALL)
    assert again == clothing[1]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel

    make_demo_data(tmp_path / "other", seed=1, **SMALL)
    assert not set(p.name for p in (out / "image").iterdir()) & set(
        p.name for p in (tmp_path / "other/image").iterdir()
    )
    for name in dd.OUTPUT_CSVS:
        assert (out / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


@pytest.mark.parametrize("domain", DOMAINS)
def test_titles_carry_every_visible_attribute_and_noise(domain):
    spec = get_domain(domain)
    visible = spec.visible_words()
    rng = random.Random(0)
    lengths = []
    for _ in range(300):
        combo = dd._random_combo(spec, rng)
        title = dd._title(spec, combo, rng)
        words = [value for _, value in combo[1]] + [spec.items[combo[0]].word]
        assert all(w in title for w in words), (title, words)
        rest = title
        for w in sorted(words, key=len, reverse=True):
            rest = rest.replace(w, "", 1)
        assert rest, title  # some noise besides the attribute words
        assert not any(c in title for c in ',\t"\n')
        assert not any(v in rest for v in visible if len(v) > 1 and v not in words), (title, rest)
        lengths.append(len(title))
    assert 20 <= min(lengths) and np.mean(lengths) <= 40


def test_written_titles_name_domain_words_and_noise(clothing, homeware):
    for (out, _), domain in ((clothing, "clothing"), (homeware, "homeware")):
        spec = get_domain(domain)
        noise = spec.noise
        noise_words = noise.shops + noise.times + noise.promos + noise.latin
        _, train = _rows(out / "train.csv", "\t")
        _, queries = _rows(out / "test_query.csv")
        for title in [r[0] for r in train] + [r[0] for r in queries]:
            assert any(c in title for c in spec.colours), title
            assert any(p in title for p in spec.patterns), title
            assert any(it.word in title for it in spec.items), title
            assert any(w in title for w in noise_words), title
        has_digits = sum(any(ch.isdigit() for ch in r[0]) for r in train)
        assert has_digits > len(train) // 3  # years and stray numbers, like real listings


@pytest.mark.parametrize("domain", DOMAINS)
def test_noise_vocabulary_never_names_a_visible_attribute(domain):
    spec = get_domain(domain)
    noise = spec.noise
    noise_words = noise.shops + noise.latin + noise.times + noise.promos + noise.fillers + noise.suffixes + noise.sizes
    for word in noise_words:
        assert not any(v in word for v in spec.visible_words()), word
        assert not any(c in word for c in ',\t"\n'), word


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_visible_attribute_changes_the_picture(domain):
    # Render pairs that differ in one attribute only, with the same jitter: pixels must differ.
    spec = get_domain(domain)
    rng = random.Random(3)
    for index, item in enumerate(spec.items):
        base = {slot: rng.choice(options) for slot, options in dd._slots(spec, item)}
        for slot, options in dd._slots(spec, item):
            pictures = []
            for option in options[:3]:
                attrs = tuple((s, option if s == slot else v) for s, v in base.items())
                pictures.append(np.asarray(dd._render(spec, (index, attrs), 112, random.Random(5)), dtype=float))
            for a, b in zip(pictures, pictures[1:]):
                assert np.abs(a - b).mean() > 0.3, (item.word, slot)


def test_horizontal_flip_keeps_the_picture(clothing, homeware):
    # Titles must stay true under a flip: images are near-symmetric, far less alike than two items.
    for out, _ in (clothing, homeware):
        pictures = [np.asarray(Image.open(p), dtype=float) for p in sorted((out / "image").iterdir())[:16]]
        flip = np.mean([np.abs(a - a[:, ::-1]).mean() for a in pictures])
        cross = np.mean([np.abs(a - b).mean() for a, b in zip(pictures, pictures[1:])])
        assert flip < 0.35 * cross, (flip, cross)


def test_targets_distinct_and_distractors_are_hard_negatives():
    spec = get_domain("clothing")
    targets, distractors, train = dd._sample_combos(spec, random.Random(0), 100, 300, 50)
    assert len(set(targets)) == 100 and len(train) == 50
    assert not set(distractors) & set(targets)

    def differs_by_one(a, b):
        return a[0] == b[0] and sum(x != y for x, y in zip(a[1], b[1])) == 1

    near = sum(any(differs_by_one(d, t) for t in targets) for d in distractors)
    assert near >= len(distractors) // 3


def test_invalid_arguments_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="domain must be one of clothing, homeware"):
        make_demo_data(tmp_path, domain="furniture")
    with pytest.raises(ConfigError, match=r"n_queries must be an integer >= 1, got 0"):
        make_demo_data(tmp_path, n_queries=0)
    with pytest.raises(ConfigError, match=r"image_size must be an integer >= 32"):
        make_demo_data(tmp_path, image_size=8)
    with pytest.raises(ConfigError, match=r"n_queries=5000 is too many for domain 'clothing'"):
        make_demo_data(tmp_path, n_queries=5000)
    assert not any(tmp_path.iterdir())  # nothing written on refusal


def test_existing_output_needs_overwrite(tmp_path):
    make_demo_data(tmp_path, n_train=3, n_queries=2, n_distractors=2)
    with pytest.raises(ConfigError, match="already holds data .* pass overwrite=True"):
        make_demo_data(tmp_path, seed=1, n_train=3, n_queries=2, n_distractors=2)
    counts = make_demo_data(tmp_path, seed=1, n_train=1, n_queries=1, n_distractors=1, overwrite=True)
    assert len(list((tmp_path / "image").iterdir())) == counts["images"] == 3  # old images gone

    (tmp_path / "image" / "mine.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="also holds mine.png"):
        make_demo_data(tmp_path, overwrite=True, n_train=1, n_queries=1, n_distractors=1)
    assert (tmp_path / "image" / "mine.png").exists()


def test_custom_domain_spec_uses_the_same_engine(tmp_path):
    # A one-item domain built from the public dataclasses: the engine must not assume clothing.
    def shape(d, g, a):
        d.ellipse(g.box(-0.6, -0.6, 0.6, 0.6), fill=255)

    spec = dd.DomainSpec(
        name="balls",
        items=(dd.ItemType("球", (), shape),),
        colours={"红色": (200, 30, 30), "蓝色": (30, 30, 200)},
        patterns={"纯色": "solid", "条纹": "stripes"},
        noise=dd.NoiseVocab(("球店",), ("AB",), ("夏季",), ("新款",), ("耐用",), ("单个装",), ("5号",)),
    )
    counts = make_demo_data(tmp_path, domain=spec, n_train=4, n_queries=2, n_distractors=1)
    assert counts["gallery"] == 3
    _, queries = _rows(tmp_path / "test_query.csv")
    assert all("球" in r[0] for r in queries)


@pytest.mark.parametrize("layout", ["chinese-clip", "imagefolder"])
def test_make_demo_data_writes_each_layout_checked_clean(layout, tmp_path, capsys):
    from cnclip_lora.commands import main
    from cnclip_lora.data import check_data

    out = tmp_path / layout
    argv = ["make-demo-data", str(out), "--layout", layout, "--n_train", "40", "--n_queries", "6",
            "--n_distractors", "3", "--image_size", "32"]  # fmt: skip
    assert main(argv) == 0
    report = check_data(out)
    assert report.ok and report.layout == ("chinese-clip" if layout == "chinese-clip" else "datasets")
    assert report.n_train > 0 and report.n_val > 0 and report.n_queries == 6
    if layout == "chinese-clip":
        assert report.multi_caption_images > 0  # texts with several relevant images
