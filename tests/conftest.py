"""Shared test fixtures.

Data fixtures (used by tests/data/test_data.py and any test that needs a data folder):
``make_dataset_dir`` builds a tiny competition-layout folder with PIL-made images.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports datasets: the pixel and embedding caches (and any other datasets cache) go
# to a throwaway folder, not the user's ~/.cache, and it is removed when the test run ends.
if "HF_DATASETS_CACHE" not in os.environ:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="cnclip-test-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import pytest
from PIL import Image


def _color(i: int) -> tuple[int, int, int]:
    return ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 120) % 256)


def build_dataset_dir(
    root: Path,
    *,
    n_train_images: int = 6,
    captions_per_image: int = 1,
    n_gallery: int = 4,
    n_queries: int = 3,
    encoding: str = "utf-8",
    sample_submit: bool = True,
    answers: bool = True,
) -> Path:
    """Write a competition-layout folder under ``root`` and return ``root``.

    Train images are ``train_XXX.jpg``, gallery images ``gal_XXX.jpg``; query ``j`` is
    answered by ``gal_{j % n_gallery}.jpg`` in ``test_answers.csv``. Titles are Chinese so
    the encoding matters.
    """
    image_dir = root / "image"
    image_dir.mkdir(parents=True, exist_ok=True)
    lines = ["title\tpath"]
    for i in range(n_train_images):
        name = f"train_{i:03d}.jpg"
        Image.new("RGB", (16, 16), _color(i)).save(image_dir / name, "JPEG")
        for k in range(captions_per_image):
            lines.append(f"云思木想2019秋装新款{i}号连衣裙款式{k}\t{name}")
    (root / "train.csv").write_text("\n".join(lines) + "\n", encoding=encoding)
    for j in range(n_gallery):
        Image.new("RGB", (16, 16), _color(100 + j)).save(image_dir / f"gal_{j:03d}.jpg", "JPEG")
    queries = ["title"] + [f"查询{j}号女装长袖T恤" for j in range(n_queries)]
    (root / "test_query.csv").write_text("\n".join(queries) + "\n", encoding=encoding)
    if sample_submit:
        rows = ["title,path"] + [f"查询{j}号女装长袖T恤," for j in range(n_queries)]
        (root / "sample_submit.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if answers and n_gallery:
        rows = ["query,path"] + [f"{j},gal_{j % n_gallery:03d}.jpg" for j in range(n_queries)]
        (root / "test_answers.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def make_dataset_dir():
    """Factory: ``make_dataset_dir(tmp_path, **options)`` -> path of a fresh data folder."""

    def make(tmp_path: Path, name: str = "xfdata", **options) -> Path:
        return build_dataset_dir(Path(tmp_path) / name, **options)

    return make


# ------------------------------------------------------------------ model + demo fixtures
# Built once per session: the tiny model and a small synthetic dataset, both offline.


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Chinese-CLIP checkpoint folder laid out like the Hub's."""
    from cnclip_lora.demo.tiny_model import make_tiny_model

    return Path(make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset in the competition layout (with test_answers.csv)."""
    from cnclip_lora.demo.data import make_demo_data

    root = tmp_path_factory.mktemp("demo-data") / "xfdata"
    make_demo_data(root, seed=1, n_train=64, n_queries=12, n_distractors=20)
    return root


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    """The tiny model's processor (tests of the input path)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture
def asym_image(tmp_path):
    """An image whose left half differs from its right half, so a flip is visible."""
    import numpy as np

    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[:, :20] = (250, 10, 10)
    arr[:, 20:] = (10, 10, 250)
    path = tmp_path / "asym.png"
    Image.fromarray(arr).save(path)
    return path
