"""Our input path equals the official Chinese-CLIP implementation (PyPI cn-clip 1.6.0).

The reference runs in a child process (``tests/official_ref.py``): the installed ``cn_clip`` code,
with torchvision's pure-Python transforms loaded from ``.venv/cnclip-reference`` (installed there
by ``make test`` with ``pip install --no-deps --target``) behind an import shim that replaces only
torchvision's two fake-kernel registration modules for its compiled ops, which do not load beside
the CPU torch. The official ``_preprocess_text`` is taken from ``cn_clip/eval/data.py`` alone.
Token tests use the real bert-base-chinese vocab at ``../shared/vocab`` (beside the clone).
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from official_ref import SHARED_VOCAB, child_env, reference_available, run_reference
from PIL import Image

from cnclip_lora.adapter.record import Preprocessing, RunRecord
from cnclip_lora.inputs.images import decode_resized, pixel_values_from_uint8, preprocess_images
from cnclip_lora.inputs.text import tokenize_titles

_missing = reference_available() or (None if SHARED_VOCAB.is_file() else f"{SHARED_VOCAB} is missing")
pytestmark = pytest.mark.skipif(_missing is not None, reason=str(_missing))

TITLES = [
    "【包邮】美的（Midea）电饭煲家用4L智能预约！",
    "ｉＰｈｏｎｅ１５　Ｐｒｏ手机壳（10双装）～",
    "“爆款”连衣裙女2019秋装新款…①号￥99",
    "Nike耐克 Air Max 270 男鞋 running shoes",
    "网红ins风😀🔥水杯 café naïve",
    "[CLS] 标题里[SEP]有[PAD]特殊[MASK]字样[UNK]",
    "超长标题" * 40,
    "a\u200bb\u00adc\x01d\te\nf　全角空格",
    "x" * 150 + " 长英文单词",
    "",
]


def _random_titles(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [
        (0x20, 0x7E),
        (0x4E00, 0x9FFF),
        (0xFF01, 0xFF5E),
        (0x3000, 0x303F),
        (0x2000, 0x206F),
        (0x1F300, 0x1F64F),
        (0x00A0, 0x017F),
        (0x0000, 0x001F),
        (0x2460, 0x24FF),
    ]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 60)):
            lo, hi = rng.choice(pools)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """The tokenizer as convert-original (and the Hub checkpoints) ship it: BertTokenizer over vocab.txt."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tok")
    BertTokenizer(vocab=str(SHARED_VOCAB), do_lower_case=True, model_max_length=512).save_pretrained(folder)
    return BertTokenizer.from_pretrained(folder)


def test_token_ids_equal_official_tokenize(hf_tokenizer, tmp_path):
    titles = TITLES + _random_titles(300)
    ref = run_reference({"op": "tokenize", "texts": titles, "context_length": 52}, tmp_path)["input_ids"]
    ours = tokenize_titles(titles, hf_tokenizer, 52)
    mismatched = [t for t, a, b in zip(titles, ours["input_ids"], ref) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} titles tokenised differently, e.g. {mismatched[:3]!r}"
    # The official model masks exactly the padding ids.
    assert torch.equal(ours["attention_mask"], (ref != 0).long())


def test_old_records_replay_nfkc(hf_tokenizer):
    old = Preprocessing.from_dict({"max_length": 52, "train_flip": "always", "draft": True})
    assert old.title_normalization == "nfkc" and Preprocessing().title_normalization == "official"
    folded = tokenize_titles(["ｉＰｈｏｎｅ"], hf_tokenizer, 52, old.title_normalization)["input_ids"]
    assert torch.equal(folded, tokenize_titles(["iphone"], hf_tokenizer, 52)["input_ids"])
    official = tokenize_titles(["ｉＰｈｏｎｅ"], hf_tokenizer, 52)["input_ids"]
    assert int((official != 0).sum()) == 2 + 6  # one id per full-width letter, as the official tokenizer


def _images(root) -> list[str]:
    """Non-square JPEGs 224-1500 px with sharp edges, and RGB / greyscale PNGs."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(224, 300), (750, 1000), (1200, 900), (1500, 640), (301, 1499)]):
        arr = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)[:h, :w]
        arr[h // 3 : h // 3 + 5] = 255  # a thin line: what draft decoding blurs
        path = root / f"img{i}.jpg"
        Image.fromarray(arr).save(path, quality=92)
        paths.append(path)
    arr = rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)
    Image.fromarray(arr).save(root / "rgb.png")
    Image.fromarray(arr[..., 0]).save(root / "grey.png")
    return [str(p) for p in paths] + [str(root / "rgb.png"), str(root / "grey.png")]


def test_pixels_equal_official_image_transform(tmp_path, tiny_model_dir):
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    from cnclip_lora.convert import _CLIP_MEAN, _CLIP_STD
    from cnclip_lora.training.pixel_cache import build_pixel_cache

    paths = _images(tmp_path)
    ref = run_reference({"op": "pixels", "paths": paths, "size": 224}, tmp_path)["pixel_values"]
    # The released checkpoints' preprocessor_config.json (convert-original writes the same).
    processor = ChineseCLIPImageProcessorPil(
        size={"height": 224, "width": 224},
        do_center_crop=False,
        resample=3,
        crop_size={"height": 224, "width": 224},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    direct = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    ours = preprocess_images(paths, processor)  # the default path (fast uint8 route for squash processors)
    fast = pixel_values_from_uint8(decode_resized(paths, processor), [False] * len(paths), processor)
    cache = build_pixel_cache(tmp_path, [p.rsplit("/", 1)[1] for p in paths], processor, cache_dir=tmp_path / "c")
    cached = pixel_values_from_uint8(cache.get([p.rsplit("/", 1)[1] for p in paths]), [False] * len(paths), processor)
    for name, got in (
        ("processor", direct),
        ("preprocess_images", ours),
        ("collator fast path", fast),
        ("pixel cache", cached),
    ):
        assert (got - ref).abs().max() < 1e-5, name
    # --fast_decode departs from it (measured for the README), and only for large JPEGs.
    drafted = preprocess_images(paths, processor, draft=True)
    assert (drafted - ref).abs().max() > 1e-2


def test_converted_official_model_gives_official_embeddings(tmp_path):
    from cnclip_lora.convert import convert_original
    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.modeling import load_model_and_processor

    info = {
        "embed_dim": 32,
        "image_resolution": 64,
        "vision_layers": 2,
        "vision_width": 64,
        "vision_head_width": 32,
        "vision_patch_size": 16,
        "vocab_size": 21128,
        "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": "gelu",
        "text_hidden_dropout_prob": 0.1,
        "text_hidden_size": 64,
        "text_initializer_range": 0.02,
        "text_intermediate_size": 128,
        "text_max_position_embeddings": 64,
        "text_num_attention_heads": 2,
        "text_num_hidden_layers": 2,
        "text_type_vocab_size": 2,
    }
    paths = _images(tmp_path)
    ckpt = tmp_path / "epoch_latest.pt"
    ref = run_reference(
        {"op": "embed", "model_info": info, "ckpt": str(ckpt), "texts": TITLES, "paths": paths}, tmp_path
    )
    out = convert_original(ckpt, tmp_path / "hf", model_info=info, vocab=SHARED_VOCAB)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt"} <= {
        p.name for p in out.iterdir()
    }
    model, processor = load_model_and_processor(str(out))
    encoder = RetrievalModel(model, processor, Preprocessing(max_length=52))
    text = encoder.encode_texts(TITLES)
    image = encoder.encode_images(paths)

    def cos(ours, theirs):
        theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
        return (ours * theirs).sum(-1)

    assert cos(text, ref["text"]).min() >= 0.9999
    assert cos(image, ref["image"]).min() >= 0.9999


class NotATensor:
    """Any class instance needs full unpickling, which convert-original never does."""


def test_convert_original_refuses_pickles_without_traceback(tmp_path):
    bad = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "cfg": NotATensor()}, bad)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnclip_lora",
            "convert-original",
            str(bad),
            str(tmp_path / "o"),
            "--vision_model",
            "ViT-B-16",
            "--text_model",
            "RoBERTa-wwm-ext-base-chinese",
            "--vocab",
            str(SHARED_VOCAB),
        ],
        capture_output=True,
        text=True,
        env=child_env(False),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "weights_only" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "o").exists()


def test_retrieval_pixels_equal_training_with_torchvision_importable(tmp_path, tiny_model_dir):
    """transformers picks the torchvision backend when it can import torchvision (every GPU machine);
    training and retrieval (with and without adapter) must still resize with the same (PIL) backend."""
    import json

    from cnclip_lora.modeling import apply_lora, load_model_and_processor

    paths = _images(tmp_path)
    model, processor = load_model_and_processor(str(tiny_model_dir))
    adapter = tmp_path / "adapter"
    apply_lora(model, r=2, alpha=4).save_pretrained(adapter)
    processor.save_pretrained(adapter)
    RunRecord(Preprocessing(train_flip="none")).save(adapter)
    meta = run_reference(
        {
            "op": "backend_probe",
            "model": str(tiny_model_dir),
            "adapter": str(adapter),
            "image_dir": str(tmp_path),
            "names": [p.rsplit("/", 1)[1] for p in paths],
        },
        tmp_path,
    )["meta"]
    assert meta["plain_backend"] == "torchvision", json.dumps(meta)  # the simulation really has torchvision
    assert meta["train_backend"] == meta["base_backend"] == meta["adapter_backend"] == "pil", json.dumps(meta)
    assert meta["base_max_diff"] == 0 and meta["adapter_max_diff"] == 0, json.dumps(meta)
