"""The shared preprocessing path: collator contract, flips, title length, the recorded record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from cnclip_lora.collate import (
    RECORD_FILE,
    ImageTextCollator,
    Preprocessing,
    TitleTokenMemo,
    tokenize_titles,
    write_record,
)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture
def asym_image(tmp_path):
    """An image whose left half differs from its right half, so a flip is visible."""
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[:, :20] = (250, 10, 10)
    arr[:, 20:] = (10, 10, 250)
    path = tmp_path / "asym.png"
    Image.fromarray(arr).save(path)
    return path


def test_collator_returns_the_documented_batch(processor, demo_dir):
    import pandas as pd

    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(3).to_dict("records")
    batch = ImageTextCollator(processor, demo_dir / "image", max_length=52, flip="none")(rows)
    size = processor.image_processor.size["height"]
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values"}
    longest = int(batch["attention_mask"].sum(dim=1).max())
    assert batch["input_ids"].shape == (3, min(52, -(-longest // 8) * 8))  # padded to the longest, multiple of 8
    assert batch["pixel_values"].shape == (3, 3, size, size)
    assert batch["pixel_values"].dtype == torch.float32


def test_long_titles_are_truncated_to_max_length(processor):
    long_title = "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723" * 5
    enc = tokenize_titles([long_title, "短"], processor.tokenizer, max_length=52)
    assert enc["input_ids"].shape == (2, 52)
    assert enc["attention_mask"][0].sum() == 52  # the long one fills every position
    assert enc["attention_mask"][1].sum() < 52   # the short one is padded


def test_random_flip_follows_torch_seed(processor, asym_image, tmp_path):
    rows = [{"title": "红色", "path": asym_image.name}] * 16
    collate = ImageTextCollator(processor, tmp_path, flip="random")
    torch.manual_seed(0)
    a = collate(rows)["pixel_values"]
    torch.manual_seed(0)
    b = collate(rows)["pixel_values"]
    assert torch.equal(a, b)
    left_red = a[:, 0, :, 0].mean(dim=-1) > 0  # red channel high at the left edge = not flipped
    assert 0 < int(left_red.sum()) < 16         # some flipped, some not


def test_inference_flip_only_when_every_training_image_was_flipped():
    assert Preprocessing(train_flip="always").inference_flip is True
    assert Preprocessing(train_flip="random").inference_flip is False
    assert Preprocessing(train_flip="none").inference_flip is False


def test_record_round_trips(tmp_path):
    prep = Preprocessing(max_length=40, train_flip="always", draft=False)
    write_record(tmp_path, prep, data={"n_train": 3})
    saved = json.loads((tmp_path / RECORD_FILE).read_text())
    assert saved["preprocessing"]["inference_flip"] is True
    assert saved["data"] == {"n_train": 3}
    assert Preprocessing.load(tmp_path) == prep
    assert Preprocessing.load(tmp_path / "missing") is None


def test_collator_names_a_missing_image(processor, tmp_path):
    from cnclip_lora.errors import DataError

    with pytest.raises(DataError, match="nope.jpg"):
        ImageTextCollator(processor, tmp_path, flip="none")([{"title": "t", "path": "nope.jpg"}])
def _tokens_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("pad_to_max_length", [False, True])
def test_token_memo_gives_the_tokenizers_rows_and_skips_it_for_known_titles(processor, pad_to_max_length):
    titles = ["红色条纹T恤", "纯棉圆领短袖", "红色条纹T恤", "一个非常非常长的标题" * 8, "儿童卡通水杯"]
    calls = []
    tokenizer = processor.tokenizer

    def counting(batch, *args, **kwargs):
        calls.append(list(batch))
        return tokenizer(batch, *args, **kwargs)

    memo = TitleTokenMemo()
    pad = {"pad_to_max_length": pad_to_max_length}
    first = memo(titles[:3], counting, 52, **pad)
    assert calls == [["红色条纹t恤", "纯棉圆领短袖"]]  # each distinct new title once (as prepared: lower-cased)
    assert _tokens_equal(first, tokenize_titles(titles[:3], tokenizer, 52, **pad))
    mixed = memo(titles[::-1], counting, 52, **pad)  # known and new titles, another order
    assert calls[1] == [titles[4], titles[3]]
    assert _tokens_equal(mixed, tokenize_titles(titles[::-1], tokenizer, 52, **pad))
    again = memo(titles, counting, 52, **pad)
    assert len(calls) == 2 and len(memo) == 4
    assert _tokens_equal(again, tokenize_titles(titles, tokenizer, 52, **pad))
    short = memo(titles[1:3], counting, 52, **pad)  # a batch of short known titles only
    assert _tokens_equal(short, tokenize_titles(titles[1:3], tokenizer, 52, **pad))
    assert short["input_ids"].shape[1] == (52 if pad_to_max_length else 8)


def test_token_memo_stops_growing_at_capacity_and_stays_exact(processor):
    tokenizer = processor.tokenizer
    memo = TitleTokenMemo(capacity=3)
    titles = [f"标题{i}" for i in range(5)]
    assert _tokens_equal(memo(titles[:3], tokenizer, 52), tokenize_titles(titles[:3], tokenizer, 52))
    assert _tokens_equal(memo(titles, tokenizer, 52), tokenize_titles(titles, tokenizer, 52))
    assert len(memo) == 3


def test_token_memo_widens_values_a_narrow_column_cannot_hold():
    def fake_tokenizer(batch, **kwargs):
        n = len(batch)
        return {"input_ids": torch.full((n, 4), 70_000, dtype=torch.long),
                "token_type_ids": torch.tensor([[0, 1, 300, -5]] * n)}  # fmt: skip

    memo = TitleTokenMemo()
    memo(["a"], fake_tokenizer, 4)
    out = memo(["b", "a"], fake_tokenizer, 4)
    assert _tokens_equal(out, fake_tokenizer(["b", "a"]))
