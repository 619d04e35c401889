"""Symmetric contrastive (InfoNCE) loss over text/image embeddings, optionally over the global batch.

The loss works on embeddings, not on the model, so the trainer can compute the two towers
however it likes (LoRA, gradient checkpointing, DDP) and tests need no model at all.
On one process it equals ``ChineseCLIPModel(..., return_loss=True).loss`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.utils.distributed import rank_and_world

__all__ = ["ContrastiveLoss", "LossOutput", "gathered_contrastive_loss"]


@dataclass
class LossOutput:
    """What :class:`ContrastiveLoss` returns.

    ``loss`` carries the gradient. The accuracies are this process's share of correct
    in-batch argmax hits (over the *global* batch); the integer counts let a trainer sum
    hits exactly across processes and steps instead of averaging averages.
    """

    loss: torch.Tensor
    t2i_accuracy: torch.Tensor
    i2t_accuracy: torch.Tensor
    t2i_correct: torch.Tensor
    i2t_correct: torch.Tensor
    total: torch.Tensor


def _check_pair(text: torch.Tensor, image: torch.Tensor) -> None:
    if text.ndim != 2 or image.ndim != 2 or text.shape != image.shape:
        raise CnClipLoraError(
            "text and image embeddings must both be [batch, dim] with the same shape, "
            f"got text {tuple(text.shape)} and image {tuple(image.shape)}"
        )


def gathered_contrastive_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    all_text_embeds: torch.Tensor,
    all_image_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    rank: int,
    valid_mask: torch.Tensor | None = None,
    all_valid_mask: torch.Tensor | None = None,
    max_scale: float | None = None,
) -> LossOutput:
    """Loss of this process's rows against the global batch, from already-gathered embeddings.

    This is the whole numerical content of :class:`ContrastiveLoss` without any collective,
    so several "ranks" can be simulated in one process. Embeddings must already be L2
    normalised; row ``i`` of the local batch is global row ``rank * B + i``, and text
    ``j`` is the positive of image ``j``.

    Args:
        text_embeds: ``[B, D]`` this process's normalised text embeddings.
        image_embeds: ``[B, D]`` this process's normalised image embeddings.
        all_text_embeds: ``[W * B, D]`` every process's text embeddings, rank order.
        all_image_embeds: ``[W * B, D]`` every process's image embeddings, rank order.
        logit_scale: the model's *log* temperature (``model.logit_scale``); ``exp`` is applied here.
        rank: this process's index in the gathered batch.
        valid_mask: ``[B]`` bool, ``False`` for padding rows (they are neither queries nor negatives).
        all_valid_mask: ``[W * B]`` bool, the gathered ``valid_mask``.
        max_scale: optional cap on ``exp(logit_scale)``; ``None`` (the default) matches HF, which
            does not clamp in ``forward``.

    Returns:
        A :class:`LossOutput`; averaging ``loss`` over the W processes gives the loss of one
        process on the concatenated batch (see the comment on the scale factor below).
    """
    _check_pair(text_embeds, image_embeds)
    _check_pair(all_text_embeds, all_image_embeds)
    local_b, global_b = text_embeds.shape[0], all_text_embeds.shape[0]
    if local_b == 0:
        raise CnClipLoraError("contrastive loss needs at least one row per process, got an empty batch")
    world_size = global_b // local_b
    if global_b % local_b or not 0 <= rank < world_size:
        raise CnClipLoraError(
            f"gathered batch of {global_b} rows does not hold rank {rank}'s slice of {local_b} rows; "
            "every process must use the same per-device batch size (pad and pass valid_mask)"
        )
    device = text_embeds.device
    if valid_mask is None:
        valid_mask = torch.ones(local_b, dtype=torch.bool, device=device)
    if all_valid_mask is None:
        if world_size == 1:
            all_valid_mask = valid_mask
        elif bool(valid_mask.all()):
            all_valid_mask = torch.ones(global_b, dtype=torch.bool, device=device)
        else:
            raise CnClipLoraError("valid_mask marks padding but all_valid_mask (the gathered mask) is missing")
    valid_mask, all_valid_mask = valid_mask.to(device, torch.bool), all_valid_mask.to(device, torch.bool)

    scale = torch.as_tensor(logit_scale, device=device).exp()
    if max_scale is not None:
        scale = scale.clamp(max=max_scale)
    # At least float32 even for bf16/fp16 embeddings or under autocast: cheap at [B, W*B] and
    # avoids softmax overflow at scale 100 (float64 stays float64, for exact tests).
    dtype = torch.promote_types(text_embeds.dtype, torch.float32)
    with torch.autocast(device_type=device.type, enabled=False):
        scale = scale.to(dtype)
        logits_t2i = (text_embeds.to(dtype) @ all_image_embeds.to(dtype).T) * scale  # [B_local, B_global]
        logits_i2t = (image_embeds.to(dtype) @ all_text_embeds.to(dtype).T) * scale  # [B_local, B_global]
        # Padding columns are removed as negatives with the dtype's minimum, not -inf, so a
        # row where everything is padding stays finite (no NaN gradients).
        padded = ~all_valid_mask[None, :]
        neg = torch.finfo(logits_t2i.dtype).min
        logits_t2i = logits_t2i.masked_fill(padded, neg)
        logits_i2t = logits_i2t.masked_fill(padded, neg)
        targets = torch.arange(local_b, device=device) + rank * local_b
        # Padded query rows are zeroed, not indexed out: boolean indexing would force a
        # device->host sync every step. Their (finite) values and gradients become 0.
        ce_t2i = F.cross_entropy(logits_t2i, targets, reduction="none").masked_fill(~valid_mask, 0.0)
        ce_i2t = F.cross_entropy(logits_i2t, targets, reduction="none").masked_fill(~valid_mask, 0.0)

    # Scale factor. The global loss is L = sum_r (ce_t2i_r + ce_i2t_r) / (2 M) over the M valid
    # rows of all W processes. Process w returns L_w = W * (its rows' share of that sum); then
    # mean_w L_w = L, and since the gather's backward sums every process's gradient into the
    # owner of each embedding, DDP's mean of the W gradients is d(sum_w L_w)/W = dL.
    n_valid_global = all_valid_mask.sum().clamp(min=1)
    loss = (ce_t2i.sum() + ce_i2t.sum()) * world_size / (2 * n_valid_global)

    with torch.no_grad():
        t2i_correct = ((logits_t2i.argmax(dim=1) == targets) & valid_mask).sum()
        i2t_correct = ((logits_i2t.argmax(dim=1) == targets) & valid_mask).sum()
        total = valid_mask.sum()
        denom = total.clamp(min=1).float()
    return LossOutput(
        loss=loss,
        t2i_accuracy=t2i_correct.float() / denom,
        i2t_accuracy=i2t_correct.float() / denom,
        t2i_correct=t2i_correct,
        i2t_correct=i2t_correct,
        total=total,
    )


class ContrastiveLoss(torch.nn.Module):
    """CLIP loss over embeddings, gathered across processes so negatives come from the global batch.

    Shaped like open_clip's ``ClipLoss``: it owns no parameters; the model's ``logit_scale``
    is passed in. Each process scores its own rows against all ``W * B`` rows, which costs
    ``O(B * W * B)`` instead of ``O((W * B)^2)`` and needs a gather *with* gradients
    (``torch.distributed.nn.functional.all_gather``, whose backward sums gradients back to
    the owning process). With DDP's gradient averaging, W processes x B rows give the same
    loss and the same update as one process on the W * B batch. Every process must use the
    same per-device batch size; pad uneven last batches and pass ``valid_mask``.

    Args:
        gather: gather embeddings across processes when a process group is running.
        rank: this process's rank; taken from ``torch.distributed`` when ``None``.
        world_size: number of processes; taken from ``torch.distributed`` when ``None``.
        max_scale: optional cap on ``exp(logit_scale)`` (HF's forward does not clamp; the
            trainer may clamp the parameter itself).

    Example:
        >>> loss_fn = ContrastiveLoss()
        >>> out = loss_fn(text_embeds, image_embeds, model.logit_scale)
        >>> out.loss.backward()
    """

    def __init__(
        self,
        gather: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        max_scale: float | None = None,
    ):
        super().__init__()
        self.gather = gather
        self.rank = rank
        self.world_size = world_size
        self.max_scale = max_scale

    def _rank_world(self) -> tuple[int, int]:
        dist_rank, dist_world = rank_and_world(group_only=True)
        rank = dist_rank if self.rank is None else self.rank
        world = dist_world if self.world_size is None else self.world_size
        return rank, world

    def forward(
        self,
        text_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        *,
        valid_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """Compute the loss for this process's batch.

        Args:
            text_embeds: ``[B, D]`` projected text features (normalised here, L2).
            image_embeds: ``[B, D]`` projected image features (normalised here, L2).
            logit_scale: the model's log temperature parameter.
            valid_mask: ``[B]`` bool, ``False`` marks padding rows.

        Returns:
            A :class:`LossOutput`.
        """
        _check_pair(text_embeds, image_embeds)
        if valid_mask is not None and valid_mask.shape != (text_embeds.shape[0],):
            raise CnClipLoraError(
                f"valid_mask must have shape ({text_embeds.shape[0]},), got {tuple(valid_mask.shape)}"
            )
        text = F.normalize(text_embeds, dim=-1)
        image = F.normalize(image_embeds, dim=-1)
        rank, world = self._rank_world()
        if not self.gather or world <= 1:
            return gathered_contrastive_loss(
                text, image, text, image, logit_scale, rank=0, valid_mask=valid_mask, max_scale=self.max_scale
            )
        all_text, all_image, all_valid = self._all_gather(text, image, valid_mask)
        return gathered_contrastive_loss(
            text,
            image,
            all_text,
            all_image,
            logit_scale,
            rank=rank,
            valid_mask=valid_mask,
            all_valid_mask=all_valid,
            max_scale=self.max_scale,
        )

    @staticmethod
    def _all_gather(
        text: torch.Tensor, image: torch.Tensor, valid_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise CnClipLoraError(
                "ContrastiveLoss was given world_size > 1 but no torch.distributed process group "
                "is initialised; launch with torchrun/accelerate or pass gather=False"
            )
        # Functional collectives: differentiable (the backward sums each slice's gradient back to
        # its process), and not the deprecated torch.distributed.nn.functional.all_gather.
        from torch.distributed._functional_collectives import all_gather_single_autograd

        world = torch.distributed.group.WORLD
        all_text = all_gather_single_autograd(text.contiguous(), 0, world)
        all_image = all_gather_single_autograd(image.contiguous(), 0, world)
        # Always gather a mask (all True when none is given) so every process runs the same
        # collectives whether or not it padded; gloo cannot gather bool, and masks need no grad.
        if valid_mask is None:
            valid_mask = torch.ones(text.shape[0], dtype=torch.bool, device=text.device)
        mask = valid_mask.to(torch.uint8).contiguous()
        parts = [torch.empty_like(mask) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, mask)
        all_valid = torch.cat(parts).bool()
        return all_text, all_image, all_valid
