"""Tests for model loading, LoRA wrapping and the embedding helpers."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import BertConfig, ChineseCLIPModel, ChineseCLIPProcessor

from cnclip_lora.demo.tiny_model import make_tiny_model
from cnclip_lora.errors import ConfigError, UnsafeArtifactError
from cnclip_lora.modeling import (
    apply_lora,
    count_lora_modules,
    default_lora_targets,
    get_image_embeds,
    get_text_embeds,
    h14_config,
    load_model_and_processor,
    resolve_lora_targets,
    trainable_parameters_by_tower,
)

SIZE = 32
TYPO = "vision_model.emcoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", image_size=SIZE, patch_size=8)


@pytest.fixture
def model(tiny_dir):
    # Fresh per test: get_peft_model injects adapters into the model in place.
    return load_model_and_processor(str(tiny_dir))[0]


def _batch(batch_size=4, seq_len=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (batch_size, seq_len), generator=gen)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, seq_len // 2 :] = 0  # one padded row, so the mask matters
    pixels = torch.randn(batch_size, 3, SIZE, SIZE, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "pixel_values": pixels}


def _adapted_names(peft_model):
    return {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def _randomise_lora_b(peft_model, seed=0):
    # lora_B starts at zero, which would make every adapter a no-op.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


# ---------------------------------------------------------------- loading


def test_load_returns_model_and_checkpoint_processor(tiny_dir):
    model, processor = load_model_and_processor(str(tiny_dir), dtype=torch.float32, attn_implementation="eager")
    assert isinstance(model, ChineseCLIPModel) and isinstance(processor, ChineseCLIPProcessor)
    # Preprocessing comes from the saved config, not the class defaults (224, centre crop).
    assert processor.image_processor.do_center_crop is False
    assert (processor.image_processor.size.height, processor.image_processor.size.width) == (SIZE, SIZE)
    assert model.config._attn_implementation == "eager"


def test_pickled_only_folder_is_refused(tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    state = load_model_and_processor(str(tiny_dir))[0].state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeArtifactError, match=r"only pickled weights \(pytorch_model\.bin\).*save_pretrained"):
        load_model_and_processor(str(folder))
    with pytest.raises(UnsafeArtifactError, match="can execute code"):
        load_model_and_processor(str(folder / "pytorch_model.bin"))


def test_non_chinese_clip_checkpoint_is_refused(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ConfigError, match="'bert' model, not 'chinese_clip'"):
        load_model_and_processor(str(tmp_path))


# ---------------------------------------------------------------- targets


def test_default_targets_cover_qkv_of_both_towers(model):
    targets = default_lora_targets(model.config)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[t], torch.nn.Linear) for t in targets)
    assert len([t for t in targets if t.startswith("text_model.")]) == 3 * model.config.text_config.num_hidden_layers
    assert (
        len([t for t in targets if t.startswith("vision_model.")]) == 3 * model.config.vision_config.num_hidden_layers
    )
    assert len(targets) == len(set(targets)) == 12


def test_misspelled_target_fails_naming_it(model):
    targets = default_lora_targets(model.config)
    targets[targets.index("vision_model.encoder.layers.0.self_attn.q_proj")] = TYPO
    with pytest.raises(
        ConfigError,
        match=r"1 of 12 entries match no nn\.Linear module: "
        r"'vision_model\.emcoder\.layers\.0\.self_attn\.q_proj' "
        r"\(did you mean 'vision_model\.encoder\.layers\.0\.self_attn\.q_proj'",
    ):
        apply_lora(model, r=4, alpha=8, targets=targets)
    # Refused before anything was wrapped.
    assert not any(isinstance(m, LoraLayer) for m in model.modules())


def test_every_unmatched_entry_is_reported(model):
    with pytest.raises(
        ConfigError, match=r"2 of 3 entries .*'q_prj' \(did you mean 'q_proj'.*\); 'self_attn'\. An entry"
    ):
        apply_lora(model, targets="query, q_prj, self_attn")


def test_suffix_targets_give_the_default_module_set(model):
    suffixes = "query,key,value,q_proj,k_proj,v_proj"
    expected = default_lora_targets(model.config)
    assert sorted(resolve_lora_targets(model, suffixes)) == sorted(expected)
    peft_model = apply_lora(model, r=4, alpha=8, targets=suffixes)
    assert _adapted_names(peft_model) == set(expected)
    assert count_lora_modules(peft_model) == {"text": 6, "vision": 6}


def test_apply_lora_logs_counts_and_only_lora_is_trainable(model, caplog):
    with caplog.at_level(logging.INFO, logger="cnclip_lora.modeling"):
        peft_model = apply_lora(model, r=4, alpha=8)
    assert "on 12 modules (text 6, vision 6)" in caplog.text
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    per_tower = trainable_parameters_by_tower(peft_model)
    # 6 adapted 128x128 linears per tower, r=4: A (4x128) + B (128x4) each.
    hidden = model.config.text_config.hidden_size
    assert per_tower == {"text": 6 * 2 * 4 * hidden, "vision": 6 * 2 * 4 * hidden, "other": 0}


def test_text_only_targets_leave_vision_without_adapters(model):
    peft_model = apply_lora(model, r=4, alpha=8, targets=["query", "key", "value"])
    assert count_lora_modules(peft_model) == {"text": 6, "vision": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "lora r must be a positive integer"),
        ({"alpha": -1}, "lora alpha must be positive"),
        ({"dropout": 1.0}, r"lora dropout must be in \[0, 1\)"),
        ({"targets": " , "}, "the list is empty"),
    ],
)
def test_bad_lora_options_are_refused(model, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        apply_lora(model, **kwargs)


def test_lora_twice_is_refused(model):
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(apply_lora(model, r=4, alpha=8), r=4, alpha=8)


def test_plain_model_counts():
    with torch.device("meta"):
        model = ChineseCLIPModel(h14_config())
    assert count_lora_modules(model) == {"text": 0, "vision": 0}
    counts = trainable_parameters_by_tower(model)
    heads = model.text_projection.weight.numel() + model.visual_projection.weight.numel() + 1
    assert counts["other"] == heads
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- ViT-H/14 on meta


@pytest.fixture
def h14_meta():
    with torch.device("meta"):
        return ChineseCLIPModel(h14_config())


def test_h14_meta_default_targets_match_the_intended_recipe(h14_meta):
    peft_model = apply_lora(h14_meta, r=64, alpha=96)
    assert count_lora_modules(peft_model) == {"text": 72, "vision": 96}
    per_tower = trainable_parameters_by_tower(peft_model)
    assert per_tower["text"] == 9_437_184
    assert sum(per_tower.values()) == 25_165_824
    assert per_tower["other"] == 0


def test_h14_meta_text_only_reproduces_the_seed_numbers(h14_meta):
    # What the seed actually trained once its misspelled vision targets were dropped.
    peft_model = apply_lora(h14_meta, r=64, alpha=96, targets="query,key,value")
    assert count_lora_modules(peft_model) == {"text": 72, "vision": 0}
    assert sum(trainable_parameters_by_tower(peft_model).values()) == 9_437_184


# ---------------------------------------------------------------- training and embeddings


def test_one_step_changes_lora_weights_only(model):
    peft_model = apply_lora(model, r=4, alpha=8)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss = peft_model(**_batch(), return_loss=True).loss
    loss.backward()
    optimizer.step()
    after = dict(peft_model.named_parameters())
    for name, old in before.items():
        changed = not torch.equal(old, after[name])
        if "lora_B" in name:
            assert changed, f"{name} did not change"
        elif "lora_" not in name:
            assert not changed, f"base weight {name} changed"


@pytest.mark.parametrize("wrap", [False, True])
def test_embed_helpers_match_forward(model, wrap):
    if wrap:
        model = apply_lora(model, r=4, alpha=8)
        _randomise_lora_b(model)
    model.eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch)
        text = get_text_embeds(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        image = get_image_embeds(model, batch["pixel_values"])
    assert text.shape == image.shape == (4, model.config.projection_dim)
    assert not torch.allclose(text.norm(dim=-1), torch.ones(4))  # unnormalised
    torch.testing.assert_close(text / text.norm(dim=-1, keepdim=True), out.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(image / image.norm(dim=-1, keepdim=True), out.image_embeds, atol=1e-5, rtol=0)


def test_merged_embeddings_equal_unmerged(model):
    peft_model = apply_lora(model, r=4, alpha=8).eval()
    _randomise_lora_b(peft_model)
    batch = _batch()
    with torch.no_grad():
        text = get_text_embeds(peft_model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        image = get_image_embeds(peft_model, batch["pixel_values"])
        with peft_model.disable_adapter():
            base_text = get_text_embeds(peft_model, batch["input_ids"], batch["attention_mask"])
        merged = peft_model.merge_and_unload()
        merged_text = get_text_embeds(merged, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        merged_image = get_image_embeds(merged, batch["pixel_values"])
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert (text - base_text).abs().max() > 1e-3, "adapters must matter for the comparison to mean anything"
    torch.testing.assert_close(merged_text, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_image, image, atol=1e-5, rtol=0)


def test_image_processor_is_pinned_to_pil_whatever_is_installed(tiny_model_dir, monkeypatch):
    """transformers picks the torchvision backend when torchvision is installed (GPU machines); its
    resize differs from PIL's, so training and retrieval on different machines would disagree."""
    import types

    from transformers import ChineseCLIPProcessor

    from cnclip_lora.inputs.images import supports_uint8_path
    from cnclip_lora.modeling import load_model_and_processor

    real = ChineseCLIPProcessor.from_pretrained.__func__

    def as_on_a_gpu_machine(cls, *args, **kwargs):
        processor = real(cls, *args, **kwargs)
        processor.image_processor = types.SimpleNamespace(backend="torchvision")
        return processor

    monkeypatch.setattr(ChineseCLIPProcessor, "from_pretrained", classmethod(as_on_a_gpu_machine))
    _, processor = load_model_and_processor(str(tiny_model_dir))
    assert processor.image_processor.backend == "pil"
    assert supports_uint8_path(processor.image_processor)  # the batched/cached path applies again


def test_wrapping_and_loading_adapters_raise_no_deprecation_noise(tiny_model_dir, tmp_path):
    """peft's PeftModel.__init__ trips transformers 5's is_gradient_checkpointing deprecation on
    every wrap; the package's own wrapping paths keep it away from notebook users."""
    import warnings

    from transformers import ChineseCLIPModel

    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.modeling import apply_lora

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = apply_lora(ChineseCLIPModel.from_pretrained(tiny_model_dir), r=4, alpha=8)
        model.save_pretrained(tmp_path / "adapter")
        RetrievalModel.from_pretrained(str(tiny_model_dir), adapter=str(tmp_path / "adapter"), device="cpu")
