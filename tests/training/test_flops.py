"""Model FLOPs per training sample (MFU in the GPU benchmark, ``total_flos`` in trainer_state.json)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ChineseCLIPModel

from cnclip_lora.modeling import apply_lora, h14_config
from cnclip_lora.training.flops import training_flops_per_sample


def test_vit_h14_lora_counts_match_the_architecture():
    config = h14_config()
    with torch.device("meta"):
        model = apply_lora(ChineseCLIPModel(config), r=64, alpha=96)
    f = training_flops_per_sample(model, config, text_tokens=52)
    # Counted by hand from the architecture, not by walking the model:
    # text: 24 layers x (Q, K, V, O: 4 x 1024^2 + MLP: 2 x 1024 x 4096)
    assert f["text_frozen_params"] == 24 * (4 * 1024**2 + 2 * 1024 * 4096)
    # vision: 32 layers x (4 x 1280^2 + 2 x 1280 x 5120) + the 14x14 patch convolution
    assert f["vision_frozen_params"] == 32 * (4 * 1280**2 + 2 * 1280 * 5120) + 3 * 14 * 14 * 1280
    # LoRA r=64 on Q/K/V: A (d x 64) + B (64 x d) per adapted projection
    assert f["text_lora_params"] == 24 * 3 * 2 * 1024 * 64
    assert f["vision_lora_params"] == 32 * 3 * 2 * 1280 * 64
    assert f["vision_tokens"] == (224 // 14) ** 2 + 1
    text = 4 * f["text_frozen_params"] * 52 + 6 * f["text_lora_params"] * 52 + 12 * 52**2 * 1024 * 24
    assert f["text"] == pytest.approx(text)
    assert f["total"] / 1e9 == pytest.approx(770.8, abs=0.1)  # the figure quoted in benchmarks/RESULTS.md


def _train_flos(tiny_model_dir, demo_dir, out, *extra: str) -> float:
    from cnclip_lora.commands.train import train_from_argv

    result = train_from_argv(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--data_dir",
            str(demo_dir),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--use_cpu",
            "true",
            "--val_size",
            "0",
            "--save_strategy",
            "no",
            *extra,
        ]
    )
    return json.loads((result.output_dir / "trainer_state.json").read_text())["total_flos"]


def test_trainer_total_flos_counts_both_towers_per_sample(tiny_model_dir, demo_dir, tmp_path):
    from cnclip_lora.modeling import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_model_dir))
    model = apply_lora(model, r=8, alpha=16)

    def per_sample(tokens: int) -> float:
        return training_flops_per_sample(model, model.config, text_tokens=tokens)["total"]

    # Fixed 52-token padding: every step is the same shape, so the total is exact.
    fixed = _train_flos(tiny_model_dir, demo_dir, tmp_path / "fixed", "--pad_to_max_length", "true")
    assert fixed == pytest.approx(3 * 8 * per_sample(52), rel=1e-6)
    # Per-batch padding: each step counts the width it ran (a multiple of 8, at most 52), so the
    # total lies between the narrowest and the fixed width, and below the fixed total.
    dynamic = _train_flos(tiny_model_dir, demo_dir, tmp_path / "dynamic")
    assert 3 * 8 * per_sample(8) <= dynamic < fixed
