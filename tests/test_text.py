"""The title path: truncation, and the token memo equal to the tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from cnclip_lora.inputs.text import TitleTokenMemo, prepare_titles, tokenize_titles


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_long_titles_are_truncated_to_max_length(processor):
    long_title = "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723" * 5
    enc = tokenize_titles([long_title, "短"], processor.tokenizer, max_length=52)
    assert enc["input_ids"].shape == (2, 52)
    assert enc["attention_mask"][0].sum() == 52  # the long one fills every position
    assert enc["attention_mask"][1].sum() < 52  # the short one is padded


def test_an_unknown_title_normalization_is_refused_naming_the_choices():
    from cnclip_lora.errors import ConfigError

    with pytest.raises(ConfigError, match="official, nfkc.*'NFKD'"):
        prepare_titles(["a"], "NFKD")


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
        return {
            "input_ids": torch.full((n, 4), 70_000, dtype=torch.long),
            "token_type_ids": torch.tensor([[0, 1, 300, -5]] * n),
        }

    memo = TitleTokenMemo()
    memo(["a"], fake_tokenizer, 4)
    out = memo(["b", "a"], fake_tokenizer, 4)
    assert _tokens_equal(out, fake_tokenizer(["b", "a"]))
