"""Tests for cnclip_lora.training.loss: HF equivalence, simulated multi-process gather, padding masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.training.loss import ContrastiveLoss, gathered_contrastive_loss


def _tiny_chinese_clip():
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    config = ChineseCLIPConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return ChineseCLIPModel(config).eval()


def _naive_global_loss(text, image, scale, valid=None):
    """Reference: one process, full batch, padded rows dropped entirely."""
    if valid is not None:
        text, image = text[valid], image[valid]
    t, i = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = t @ i.T * scale.exp()
    target = torch.arange(len(t))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("logit_scale", [None, 4.6052])
def test_matches_hf_chinese_clip_loss(logit_scale, dtype):
    model = _tiny_chinese_clip().to(dtype)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    torch.manual_seed(1)
    input_ids = torch.randint(1, 100, (6, 10))
    pixel_values = torch.randn(6, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
        ours = ContrastiveLoss()(out.text_embeds, out.image_embeds, model.logit_scale)
    # float64 isolates the maths; in float32 logits near 100 have an ulp of ~8e-6, so
    # re-normalising HF's already-normalised embeddings moves the loss by a few ulps.
    assert ours.loss.dtype == dtype
    if dtype == torch.float64:
        assert torch.allclose(ours.loss, out.loss, atol=1e-6, rtol=0)
    else:
        assert torch.allclose(ours.loss, out.loss, atol=1e-6, rtol=1e-6)
    # Accuracy agrees with HF's own logits.
    target = torch.arange(6)
    assert ours.t2i_correct.item() == (out.logits_per_text.argmax(1) == target).sum().item()
    assert ours.i2t_correct.item() == (out.logits_per_image.argmax(1) == target).sum().item()


def test_unnormalised_inputs_are_normalised_inside():
    torch.manual_seed(2)
    text, image = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(2.0)
    loss_fn = ContrastiveLoss()
    a = loss_fn(text, image, scale).loss
    b = loss_fn(F.normalize(text, dim=-1) * 0.1, image * 7.0, scale).loss
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, _naive_global_loss(text, image, scale), atol=1e-6)


def test_gradient_reaches_logit_scale_and_embeddings():
    torch.manual_seed(3)
    text = torch.randn(4, 8, requires_grad=True)
    image = torch.randn(4, 8, requires_grad=True)
    scale = torch.nn.Parameter(torch.tensor(2.6592))
    ContrastiveLoss()(text, image, scale).loss.backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


@pytest.mark.parametrize("world_size", [2, 3])
def test_gather_simulated_ranks_equal_one_big_batch(world_size):
    """Mean over simulated ranks of the local-rows loss == global loss, value and gradients.

    Slicing one leaf tensor per rank makes autograd sum every rank's gradient into the
    owner's rows, which is what the gather's backward does across processes.
    """
    torch.manual_seed(4)
    b, d = 3, 8
    text = torch.randn(world_size * b, d, requires_grad=True)
    image = torch.randn(world_size * b, d, requires_grad=True)
    scale = torch.nn.Parameter(torch.tensor(3.0))

    ref = _naive_global_loss(text, image, scale)
    ref_grads = torch.autograd.grad(ref, [text, image, scale])

    tn, im = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    per_rank = [
        gathered_contrastive_loss(tn[r * b : (r + 1) * b], im[r * b : (r + 1) * b], tn, im, scale, rank=r).loss
        for r in range(world_size)
    ]
    mean = torch.stack(per_rank).mean()
    grads = torch.autograd.grad(mean, [text, image, scale])
    assert torch.allclose(mean, ref, atol=1e-6)
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g, rg, atol=1e-6)
    # Each rank alone is not the global loss: the test would catch a wrong scale factor.
    assert not torch.allclose(per_rank[0], ref, atol=1e-4)


def test_valid_mask_equals_dropping_padded_rows_single_process():
    torch.manual_seed(5)
    text = torch.randn(6, 8, requires_grad=True)
    image = torch.randn(6, 8, requires_grad=True)
    scale = torch.tensor(2.5)
    valid = torch.tensor([True, True, False, True, False, True])
    out = ContrastiveLoss()(text, image, scale, valid_mask=valid)
    ref = _naive_global_loss(text, image, scale, valid)
    assert torch.allclose(out.loss, ref, atol=1e-6)
    out.loss.backward()
    assert torch.all(text.grad[~valid] == 0) and torch.all(image.grad[~valid] == 0)
    assert out.total.item() == 4


def test_valid_mask_with_simulated_ranks():
    torch.manual_seed(6)
    b, w = 4, 2
    text = torch.randn(w * b, 8, requires_grad=True)
    image = torch.randn(w * b, 8, requires_grad=True)
    scale = torch.tensor(3.0)
    valid = torch.ones(w * b, dtype=torch.bool)
    valid[-2:] = False  # last rank's uneven batch, padded by two rows
    ref = _naive_global_loss(text, image, scale, valid)
    ref_grads = torch.autograd.grad(ref, [text, image])
    tn, im = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    outs = [
        gathered_contrastive_loss(
            tn[r * b : (r + 1) * b],
            im[r * b : (r + 1) * b],
            tn,
            im,
            scale,
            rank=r,
            valid_mask=valid[r * b : (r + 1) * b],
            all_valid_mask=valid,
        )
        for r in range(w)
    ]
    mean = torch.stack([o.loss for o in outs]).mean()
    grads = torch.autograd.grad(mean, [text, image])
    assert torch.allclose(mean, ref, atol=1e-6)
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g, rg, atol=1e-6)
    assert [o.total.item() for o in outs] == [4, 2]


def test_all_padding_rank_stays_finite():
    text, image = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    out = ContrastiveLoss()(text, image, torch.tensor(4.6), valid_mask=torch.zeros(2, dtype=torch.bool))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.total.item() == 0 and out.t2i_accuracy.item() == 0.0
    assert torch.isfinite(text.grad).all()


def test_accuracy_counts_against_naive_argmax():
    torch.manual_seed(7)
    image = torch.randn(8, 16)
    text = image + 0.8 * torch.randn(8, 16)  # some pairs right, some wrong
    out = ContrastiveLoss()(text, image, torch.tensor(1.0))
    sims = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    t2i = (sims.argmax(1) == torch.arange(8)).sum().item()
    i2t = (sims.T.argmax(1) == torch.arange(8)).sum().item()
    assert out.t2i_correct.item() == t2i and out.i2t_correct.item() == i2t
    assert out.t2i_accuracy.item() == pytest.approx(t2i / 8)
    assert out.i2t_accuracy.item() == pytest.approx(i2t / 8)
    assert out.total.item() == 8


def test_max_scale_caps_temperature():
    torch.manual_seed(8)
    text, image = torch.randn(4, 8), torch.randn(4, 8)
    capped = ContrastiveLoss(max_scale=100.0)(text, image, torch.tensor(6.0)).loss
    at_cap = ContrastiveLoss()(text, image, torch.tensor(100.0).log()).loss
    uncapped = ContrastiveLoss()(text, image, torch.tensor(6.0)).loss
    assert torch.allclose(capped, at_cap, atol=1e-5)
    assert not torch.allclose(capped, uncapped, atol=1e-3)


def test_bfloat16_embeddings_give_float32_loss():
    torch.manual_seed(9)
    text, image = torch.randn(4, 8), torch.randn(4, 8)
    out = ContrastiveLoss()(text.bfloat16(), image.bfloat16(), torch.tensor(2.0))
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, _naive_global_loss(text, image, torch.tensor(2.0)), atol=5e-2)


def test_shape_errors():
    loss_fn = ContrastiveLoss()
    with pytest.raises(CnClipLoraError, match=r"text \(4, 8\) and image \(3, 8\)"):
        loss_fn(torch.randn(4, 8), torch.randn(3, 8), torch.tensor(1.0))
    with pytest.raises(CnClipLoraError, match=r"valid_mask must have shape \(4,\)"):
        loss_fn(torch.randn(4, 8), torch.randn(4, 8), torch.tensor(1.0), valid_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(CnClipLoraError, match="same per-device batch size"):
        gathered_contrastive_loss(
            torch.randn(3, 8), torch.randn(3, 8), torch.randn(7, 8), torch.randn(7, 8), torch.tensor(1.0), rank=0
        )
    with pytest.raises(CnClipLoraError, match="rank 2's slice"):
        gathered_contrastive_loss(
            torch.randn(3, 8), torch.randn(3, 8), torch.randn(6, 8), torch.randn(6, 8), torch.tensor(1.0), rank=2
        )
    with pytest.raises(CnClipLoraError, match="empty batch"):
        loss_fn(torch.randn(0, 8), torch.randn(0, 8), torch.tensor(1.0))


def test_world_size_without_process_group_is_a_clear_error():
    with pytest.raises(CnClipLoraError, match="no torch.distributed process group"):
        ContrastiveLoss(rank=0, world_size=2)(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(1.0))
    # gather=False never needs a process group.
    out = ContrastiveLoss(gather=False, rank=0, world_size=2)(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(1.0))
    assert torch.isfinite(out.loss)
