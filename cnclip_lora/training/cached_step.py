"""Cached-gradient contrastive step: the negatives of a big batch at the activation memory of a small one.

The contrastive loss couples every row of a batch with every other, so plain gradient
accumulation adds no negatives. The cached step (the GradCache idea, as in sentence-transformers'
``CachedMultipleNegativesRankingLoss``) splits the per-device batch ``B`` into chunks of ``M``:

1. embed each chunk without building the autograd graph, saving the random-number state first;
2. compute the loss on all ``B`` embeddings (gathered across processes, as the plain step does)
   and its gradient with respect to the embeddings only;
3. re-embed each chunk *with* the graph, the random state restored so dropout draws the same
   masks as in 1, and backpropagate the cached embedding gradients through it.

The parameter gradient is the plain step's: the loss is a function of the embeddings, and each
chunk's embeddings depend only on that chunk's rows. Peak activation memory follows ``M``;
the cost is one extra forward pass (not counted in ``total_flos``, which counts model FLOPs,
like gradient-checkpointing recomputation).

Under DDP only the last chunk's backward synchronises gradients (``no_sync`` for the others),
so gradients are all-reduced once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from cnclip_lora.errors import ConfigError
from cnclip_lora.training.loss import ContrastiveLoss, LossOutput

__all__ = ["cached_contrastive_step", "model_embeddings", "split_batch"]

RngState = tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]


def model_embeddings(model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and image embeddings of a collated batch, through the (possibly DDP-wrapped) model's
    ``forward`` so DDP's gradient hooks fire."""
    outputs = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs.get("attention_mask"),
        token_type_ids=inputs.get("token_type_ids"),
        pixel_values=inputs["pixel_values"],
    )
    return outputs.text_embeds, outputs.image_embeds


def _batch_size(inputs: Mapping[str, Any]) -> int:
    for key in ("input_ids", "pixel_values"):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ConfigError("the cached contrastive step needs a batch with input_ids or pixel_values")


def split_batch(inputs: Mapping[str, Any], mini_batch_size: int) -> list[dict[str, Any]]:
    """Split a collated batch into consecutive chunks of at most ``mini_batch_size`` rows.

    Every tensor (or list) whose first dimension is the batch size is sliced; anything else
    (a scalar, a per-batch setting) is passed to every chunk unchanged.
    """
    if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise ConfigError(f"--contrastive_mini_batch_size must be a positive integer, got {mini_batch_size!r}")
    size = _batch_size(inputs)
    chunks = []
    for start in range(0, size, mini_batch_size):
        rows = slice(start, min(start + mini_batch_size, size))
        chunk = {}
        for key, value in inputs.items():
            sliceable = isinstance(value, torch.Tensor) and value.ndim > 0 or isinstance(value, (list, tuple))
            chunk[key] = value[rows] if sliceable and len(value) == size else value
        chunks.append(chunk)
    return chunks


def _cuda_devices(inputs: Mapping[str, Any]) -> list[int]:
    devices = {v.device.index for v in inputs.values() if isinstance(v, torch.Tensor) and v.device.type == "cuda"}
    if devices and torch.cuda.is_available():
        devices.add(torch.cuda.current_device())
    return sorted(d for d in devices if d is not None)


def _capture_rng(cuda_devices: list[int]) -> RngState:
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda_devices]


@contextlib.contextmanager
def _replayed_rng(state: RngState, cuda_devices: list[int]) -> Iterator[None]:
    """Run the block from a saved random state; the caller's stream continues afterwards as if
    the block had not run (``fork_rng``)."""
    with torch.random.fork_rng(devices=cuda_devices):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for device, device_state in cuda:
            torch.cuda.set_rng_state(device_state, device)
        yield


def cached_contrastive_step(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    loss_fn: ContrastiveLoss,
    logit_scale: torch.Tensor,
    mini_batch_size: int,
    *,
    embed: Callable[[torch.nn.Module, Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]] = model_embeddings,
    backward: Callable[[torch.Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> LossOutput:
    """One training step's forward and backward on ``inputs`` in chunks of ``mini_batch_size`` rows.

    Leaves in the parameters' ``.grad`` what ``backward(loss_fn(*embed(model, inputs)).loss)``
    would leave (plus what they held before), with dropout replayed chunk by chunk.

    Args:
        model: the model as the training loop holds it (DDP-wrapped or not); in train mode.
        inputs: the collated per-device batch.
        loss_fn: the contrastive loss; it gathers across processes itself.
        logit_scale: the model's log temperature; if it requires grad it gets its gradient in
            the last (synchronised) chunk's backward.
        mini_batch_size: rows per chunk (``M``); the last chunk may be shorter.
        embed: ``(model, chunk) -> (text_embeds, image_embeds)``.
        backward: called on a scalar whose gradient is the loss's gradient through one chunk
            (``accelerator.backward`` with the Trainer's accumulation scaling); default
            ``Tensor.backward``.
        no_sync: a context factory that suspends DDP gradient synchronisation
            (``functools.partial(accelerator.no_sync, model)``); entered for every chunk but the
            last. Inside an outer ``no_sync`` (gradient accumulation) the last chunk stays unsynced too.
        autocast: a context factory for the forward passes and the loss (mixed precision).

    Returns:
        The :class:`LossOutput` of the whole batch, ``loss`` detached.
    """
    backward = backward or torch.Tensor.backward
    chunks = split_batch(inputs, mini_batch_size)
    devices = _cuda_devices(inputs)

    # Pass 1: embeddings without the graph; the random state each chunk started from.
    states: list[RngState] = []
    texts, images = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_capture_rng(devices))
            with autocast():
                text, image = embed(model, chunk)
            texts.append(text)
            images.append(image)
    text = torch.cat(texts).detach().requires_grad_(True)
    image = torch.cat(images).detach().requires_grad_(True)
    del texts, images

    # The loss over the whole (gathered) batch; gradients w.r.t. the embeddings only.
    with autocast():
        out = loss_fn(text, image, logit_scale)
    wrt = [text, image] + ([logit_scale] if logit_scale.requires_grad else [])
    grads = torch.autograd.grad(out.loss, wrt)
    text_grad, image_grad = grads[0].detach(), grads[1].detach()
    scale_grad = grads[2].detach() if len(grads) > 2 else None
    del text, image

    # Pass 2: each chunk again with the graph and the same random draws; backpropagate the cache.
    start = 0
    for index, (chunk, state) in enumerate(zip(chunks, states)):
        last = index == len(chunks) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync, _replayed_rng(state, devices):
            with autocast():
                chunk_text, chunk_image = embed(model, chunk)
            rows = slice(start, start + chunk_text.shape[0])
            start = rows.stop
            # A scalar whose gradient w.r.t. the chunk's embeddings is the cached one, in float32
            # whatever the autocast dtype (as the loss itself is computed).
            surrogate = (chunk_text.float() * text_grad[rows].float()).sum() + (
                chunk_image.float() * image_grad[rows].float()
            ).sum()
            if last and scale_grad is not None:
                # Inside the synchronised backward, so DDP reduces logit_scale's gradient too.
                surrogate = surrogate + (logit_scale * scale_grad).sum()
            backward(surrogate)
    return LossOutput(
        loss=out.loss.detach(),
        t2i_accuracy=out.t2i_accuracy,
        i2t_accuracy=out.i2t_accuracy,
        t2i_correct=out.t2i_correct,
        i2t_correct=out.i2t_correct,
        total=out.total,
    )
