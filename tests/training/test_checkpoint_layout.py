"""Fidelity: a folder laid out like the Hub's OFA-Sys/chinese-clip-vit-* repos loads and behaves.

Uses the real bert-base-chinese vocabulary from ../shared when present (tests only: the package
never needs it at run time).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from official_ref import SHARED_VOCAB
from PIL import Image
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from cnclip_lora.inputs.images import preprocess_images
from cnclip_lora.inputs.text import tokenize_titles
from cnclip_lora.modeling import apply_lora, count_lora_modules, load_model_and_processor

TITLE = "云思木想2019秋装新款高领弹力前后打揽修身织带长袖T恤女36723"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

VOCAB = SHARED_VOCAB
pytestmark = pytest.mark.skipif(
    not VOCAB.is_file(),
    reason=f"{VOCAB} not present: these tests need ../shared beside the checkout (as CI has it) or "
    "CNCLIP_SHARED_VOCAB pointing at bert-base-chinese-vocab.txt",
)


@pytest.fixture(scope="module")
def hub_like_dir(tmp_path_factory) -> Path:
    """config.json + model.safetensors + preprocessor_config.json + vocab.txt, as the Hub repos ship."""
    root = tmp_path_factory.mktemp("ofa-like") / "chinese-clip-vit-base-patch16"
    config = ChineseCLIPConfig(
        text_config={
            "vocab_size": 21128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    ChineseCLIPModel(config).save_pretrained(root)  # safetensors
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 224,
                "do_center_crop": False,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "ChineseCLIPFeatureExtractor",
                "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD,
                "resample": 3,
                "size": {"height": 224, "width": 224},
            }
        )
    )
    shutil.copy(VOCAB, root / "vocab.txt")
    (root / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"})
    )
    return root


def test_real_vocab_tokenises_a_competition_title_without_unk(hub_like_dir):
    _, processor = load_model_and_processor(str(hub_like_dir))
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 21128
    enc = tokenize_titles([TITLE], tokenizer, 52)
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
    assert tokenizer.unk_token_id not in ids
    assert len(ids) > 20


def test_checkpoint_preprocessing_squashes_instead_of_cropping(hub_like_dir, tmp_path):
    _, processor = load_model_and_processor(str(hub_like_dir))
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, :100] = (255, 0, 0)  # left third red: a center crop would cut it away
    wide[:, 100:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    pixels = preprocess_images([path], processor.image_processor, flips=False, draft=False)
    assert pixels.shape == (1, 3, 224, 224)
    red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert pixels[0, 0, 112, 10].item() == pytest.approx(red, abs=0.05)  # red survives at the left edge


def test_default_lora_targets_cover_both_towers_of_the_hub_layout(hub_like_dir):
    model, _ = load_model_and_processor(str(hub_like_dir))
    peft_model = apply_lora(model, r=4, alpha=8)
    assert count_lora_modules(peft_model) == {"text": 2 * 3, "vision": 3 * 3}
