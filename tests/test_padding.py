"""Dynamic title padding: batch width, equality with fixed padding, and when fixed padding is chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, HfArgumentParser

from cnclip_lora.config import CnClipTrainingArguments, DataArguments
from cnclip_lora.inference.model import RetrievalModel
from cnclip_lora.inputs.collate import ImageTextCollator
from cnclip_lora.inputs.text import tokenize_titles
from cnclip_lora.modeling import load_model_and_processor
from cnclip_lora.training.run import static_title_padding

TITLES = [
    "裙",
    "红色条纹T恤",
    "纯棉圆领短袖上衣",
    "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723",
    "夏季" * 40,
    "ab",
]


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


def _lengths(titles, tokenizer, max_length):
    return [min(max_length, len(tokenizer(t)["input_ids"])) for t in titles]


@pytest.mark.parametrize("max_length", [52, 20, 13])
@pytest.mark.parametrize("subset", [[0], [0, 1], [1, 2, 5], [0, 3], [4, 0]])
def test_dynamic_batches_are_the_fixed_rows_cut_to_the_longest_rounded_up_to_8(processor, subset, max_length):
    tok = processor.tokenizer
    titles = [TITLES[i] for i in subset]
    dyn = tokenize_titles(titles, tok, max_length)
    fixed = tokenize_titles(titles, tok, max_length, pad_to_max_length=True)
    longest = max(_lengths(titles, tok, max_length))
    width = dyn["input_ids"].shape[1]
    assert width >= longest and (width % 8 == 0 or width == max_length) and width - longest < 8
    assert width <= max_length and fixed["input_ids"].shape[1] == max_length
    assert dyn.keys() == fixed.keys()
    for key in fixed:
        assert torch.equal(dyn[key], fixed[key][:, :width]), key
        # what is cut off is padding only
        assert torch.equal(fixed[key][:, width:], fixed[key][:, -1:].expand(-1, max_length - width)), key
    assert (fixed["attention_mask"][:, width:] == 0).all()


def test_dynamic_and_fixed_padding_give_the_same_embeddings(tiny_model_dir):
    model = RetrievalModel(*load_model_and_processor(str(tiny_model_dir)))
    for batch_size in (1, 4):
        dyn = model.encode_texts(TITLES, batch_size=batch_size)
        fixed = model.encode_texts(TITLES, batch_size=batch_size, pad_to_max_length=True)
        assert (dyn * fixed).sum(axis=1).min() >= 0.99999
        np.testing.assert_allclose(dyn, fixed, atol=1e-5)


def test_collator_pads_per_batch_or_to_max_length_with_and_without_memo(processor, demo_dir):
    import pandas as pd

    rows = pd.read_csv(demo_dir / "train.csv", sep="\t").head(5).to_dict("records")
    for memo in (0, 1024):
        dyn = ImageTextCollator(processor, demo_dir / "image", flip="none", max_memo_titles=memo)
        fixed = ImageTextCollator(
            processor, demo_dir / "image", flip="none", max_memo_titles=memo, pad_to_max_length=True
        )
        for _ in range(2):  # the second call is served by the memo
            a, b = dyn(rows), fixed(rows)
            width = a["input_ids"].shape[1]
            assert b["input_ids"].shape[1] == 52 and width < 52
            assert all(torch.equal(a[k], b[k][:, :width]) for k in ("input_ids", "attention_mask", "token_type_ids"))
            assert torch.equal(a["pixel_values"], b["pixel_values"])


def _args(argv):
    parser = HfArgumentParser((DataArguments, CnClipTrainingArguments))
    return parser.parse_args_into_dataclasses(args=["--output_dir", "/tmp/unused", *argv])


@pytest.mark.parametrize(
    "argv, cuda, expected",
    [
        ([], False, False),
        ([], True, False),  # eager on a GPU: padding is wasted work
        (["--torch_compile", "true"], False, False),  # compiled on a CPU: still dynamic
        (["--torch_compile", "true"], True, True),  # compiled on a GPU: one static shape
        (["--torch_compile", "true", "--use_cpu", "true"], True, False),
        (["--torch_compile", "true", "--pad_to_max_length", "false"], True, False),
        (["--pad_to_max_length", "true"], False, True),
    ],
)
def test_fixed_padding_is_chosen_for_compiled_gpu_runs_unless_told(argv, cuda, expected, monkeypatch):
    data_args, training_args = _args(argv)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert static_title_padding(data_args.pad_to_max_length, training_args) is expected
