"""Model FLOPs of one LoRA training sample: what MFU and the Trainer's ``total_flos`` count.

Why not the Trainer's default (``6 x input_ids.numel() x all parameters``): for a two-tower model
it multiplies the *text* length by the *vision* weights too, ignores the images, and counts
weight gradients that frozen weights never get; it also walks every module on every step, which
on a small model costs more than the loss. Here, per tower, with ``T`` tokens:

* frozen linear/conv weights ``N``: ``2NT`` forward + ``2NT`` for the input gradients = ``4NT``;
* LoRA weights ``N_lora``: ``6 N_lora T`` (forward, input and weight gradients);
* attention scores and weighted sum: ``4 T^2 d`` per layer forward, x3 with backward;
* projection heads (frozen, once per sample): ``4 d p``.

Gradient-checkpointing recomputation is not credited (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from cnclip_lora.options import TOWERS, tower_of

__all__ = ["batch_shape_tokens", "training_flops_per_sample"]


def _weights_by_tower(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{tower: (frozen linear/conv weights, LoRA weights)}``, one walk over the modules."""
    counts = {tower: [0, 0] for tower in TOWERS}
    for name, module in model.named_modules():
        tower = tower_of(name)
        if tower not in counts:
            continue
        if isinstance(module, LoraLayer):
            counts[tower][1] += sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and "lora_" not in name:
            counts[tower][0] += module.weight.numel()
    return {tower: (frozen, lora) for tower, (frozen, lora) in counts.items()}


def training_flops_per_sample(
    model: nn.Module, config, text_tokens: int, image_tokens: int | None = None
) -> dict[str, float]:
    """FLOPs of one (title, image) training sample, per tower and in total (``total``).

    ``image_tokens`` defaults to the config's patches + CLS. The result also lists the weight
    counts it used (``<tower>_frozen_params``, ``<tower>_lora_params``) so a report can show them.
    """
    if image_tokens is None:
        vc = config.vision_config
        image_tokens = (vc.image_size // vc.patch_size) ** 2 + 1
    weights = _weights_by_tower(model)
    out: dict[str, float] = {}
    total = 0.0
    for tower, tokens, cfg in (
        ("text", text_tokens, config.text_config),
        ("vision", image_tokens, config.vision_config),
    ):
        frozen, lora = weights[tower]
        attention = 3 * 4 * tokens**2 * cfg.hidden_size * cfg.num_hidden_layers
        flops = 4 * frozen * tokens + 6 * lora * tokens + attention
        out.update(
            {
                f"{tower}_frozen_params": frozen,
                f"{tower}_lora_params": lora,
                f"{tower}_tokens": tokens,
                tower: float(flops),
            }
        )
        total += flops
    total += 4 * (config.text_config.hidden_size + config.vision_config.hidden_size) * config.projection_dim
    out["total"] = float(total)
    return out


def batch_shape_tokens(inputs: dict[str, torch.Tensor], config) -> tuple[int, int, int] | None:
    """``(batch, text tokens, image tokens)`` of a model batch, or ``None`` when it is not one."""
    ids, pixels = inputs.get("input_ids"), inputs.get("pixel_values")
    if ids is None or pixels is None:
        return None
    patch = config.vision_config.patch_size
    return ids.shape[0], ids.shape[1], (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + 1
