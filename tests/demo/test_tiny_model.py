"""Tests for the offline tiny Chinese-CLIP checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, BertTokenizer

from cnclip_lora.demo.tiny_model import TINY_MAX_POSITIONS, build_tiny_vocab, make_tiny_model

TITLE = "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
SIZE = 32


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, image_size=SIZE, patch_size=8)


def test_vocab_has_specials_first_and_unique_entries():
    vocab = build_tiny_vocab()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab))
    for token in ("t", "7", "##6", "##t", "-", "云", "恤", "，", "【", "“"):
        assert token in vocab


def test_folder_looks_like_a_hub_checkpoint(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vocab.txt",
        "tokenizer_config.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".tmp")) or n.startswith(".") for n in names)
    # No staging folder is left beside the output.
    assert [p.name for p in tiny_dir.parent.iterdir()] == [tiny_dir.name]


def _tokens(tokenizer, text):
    ids = tokenizer(text, max_length=52, truncation=True)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)


def test_title_tokenises_without_unk_fresh_and_after_reload(tiny_dir):
    fresh = BertTokenizer(vocab=str(tiny_dir / "vocab.txt"))
    reloaded = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    for tokenizer in (fresh, reloaded):
        tokens = _tokens(tokenizer, TITLE)
        assert "[UNK]" not in tokens
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert "".join(t.removeprefix("##") for t in tokens[1:-1]) == TITLE.lower()
    assert "[UNK]" not in _tokens(reloaded, "【包邮】男士（黑色）短袖，XL码！")
    assert reloaded.pad_token_id == 0
    assert reloaded.model_max_length == TINY_MAX_POSITIONS


def test_image_processor_squashes_without_crop(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    arr = np.zeros((24, 48, 3), np.uint8)
    arr[:, :24] = (255, 0, 0)  # left half red
    arr[:, 24:] = (0, 0, 255)  # right half blue
    arr[::5] = (0, 255, 0)
    image = Image.fromarray(arr)
    pixels = processor(images=[image, image.convert("L")], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, SIZE, SIZE)

    manual = np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float64) / 255.0
    manual = torch.tensor(((manual - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(pixels[0], manual, atol=1e-5, rtol=0)
    # A centre crop would cut both coloured edges away; a squash keeps them.
    red, blue = pixels[0, 0], pixels[0, 2]
    assert red[:, 0].mean() > blue[:, 0].mean()
    assert blue[:, -1].mean() > red[:, -1].mean()


def test_same_seed_same_weights_and_reload_is_exact(tiny_dir, tmp_path):
    state = torch.get_rng_state()
    again = make_tiny_model(tmp_path / "again", seed=0, image_size=SIZE, patch_size=8)
    assert torch.equal(torch.get_rng_state(), state), "building must not consume the global RNG"
    other = make_tiny_model(tmp_path / "other", seed=1, image_size=SIZE, patch_size=8)

    first = load_file(tiny_dir / "model.safetensors")
    second = load_file(again / "model.safetensors")
    third = load_file(other / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["text_projection.weight"], third["text_projection.weight"])

    model = AutoModel.from_pretrained(tiny_dir)
    assert type(model).__name__ == "ChineseCLIPModel"
    reloaded = model.state_dict()
    for key, value in first.items():
        assert torch.equal(reloaded[key], value), key
    assert model.logit_scale.item() == pytest.approx(4.6052, abs=1e-4)
    assert model.config.vision_config.image_size == SIZE
    assert model.config.text_config.vocab_size == len(build_tiny_vocab())


def test_forward_on_processor_output(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModel.from_pretrained(tiny_dir).eval()
    images = [Image.new("RGB", (40, 20), c) for c in ("red", "blue")]
    inputs = processor(
        text=[TITLE, "蓝色"], images=images, padding="max_length", max_length=52, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_text.shape == (2, 2)
    assert torch.isfinite(out.loss)
