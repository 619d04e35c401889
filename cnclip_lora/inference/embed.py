"""Embed titles and images with ``datasets.map``: batched, sharded across processes, cacheable.

Used by the Trainer's evaluation (no cache: the adapter changes every step) and by retrieval
(cached under a fingerprint of model, adapter, inputs and preprocessing). Embeddings come back
as L2-normalised float32 numpy arrays in input order, whatever the number of processes.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from cnclip_lora.adapter.record import Preprocessing
from cnclip_lora.inputs.images import pixel_values_from_uint8, preprocess_images
from cnclip_lora.inputs.text import tokenize_titles
from cnclip_lora.modeling import get_image_embeds, get_text_embeds
from cnclip_lora.utils.distributed import join_launch_group, rank_and_world

__all__ = ["embed_texts", "embed_images"]

logger = logging.getLogger(__name__)

#: Without a progress bar (redirected output), a set at least this large is announced in the log;
#: smaller ones take a moment and would only repeat a line at every evaluation.
_LOGGED_SIZE = 2048


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gather_in_order(local: np.ndarray | None, world_size: int) -> np.ndarray:
    """Concatenate every process's contiguous shard in rank order.

    Shards may differ in length, and a process with no items passes ``None`` (it cannot know the
    embedding width). ``all_gather_object`` rather than a tensor gather: it takes unequal shapes
    without padding, and works on any backend once the group exists (gloo, NCCL).
    """
    if world_size == 1:
        return local if local is not None else np.zeros((0, 0), dtype=np.float32)
    parts: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None and len(p)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), dtype=np.float32)


def _map_embed(
    dataset: datasets.Dataset,
    embed_batch: Callable[[dict[str, list]], np.ndarray],
    *,
    batch_size: int,
    cache_dir: str | os.PathLike | None,
    fingerprint: str | None,
    desc: str,
) -> np.ndarray:
    """Run ``embed_batch`` over this process's shard with ``datasets.map`` and gather all shards.

    Shards are contiguous (the first ``len % world_size`` processes take one extra item), so
    concatenating them in rank order restores the input order; every process, even one with no
    items, reaches the gather, so they all run the same collectives in the same order.
    """
    join_launch_group()  # under torchrun: each process embeds its shard, then all gather
    rank, world_size = rank_and_world(group_only=True)
    shard = dataset
    if world_size > 1:
        per, extra = divmod(len(dataset), world_size)
        start = rank * per + min(rank, extra)
        stop = start + per + (1 if rank < extra else 0)
        # Dataset.shard / select raise for an empty range past the end (fewer items than processes).
        if start == stop:
            return _gather_in_order(None, world_size)
        shard = dataset.select(range(start, stop))
    if world_size == 1 and (cache_dir is None or fingerprint is None):
        return _embed_directly(shard, embed_batch, batch_size, desc)
    map_kwargs: dict[str, Any] = {}
    if cache_dir is not None and fingerprint is not None:
        # An in-memory Dataset is never cached by datasets itself; naming the file after the
        # fingerprint makes a rerun with the same model/adapter/inputs a cache hit, and any change a miss.
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        suffix = f"-{rank}of{world_size}" if world_size > 1 else ""
        map_kwargs.update(
            cache_file_name=str(Path(cache_dir) / f"embed-{fingerprint}{suffix}.arrow"),
            new_fingerprint=f"{fingerprint}{suffix}",
            load_from_cache_file=True,
        )
    else:
        # A throwaway fingerprint: without one, datasets would hash the closure (and the model in it).
        map_kwargs.update(new_fingerprint=uuid.uuid4().hex, load_from_cache_file=False, keep_in_memory=True)

    def _fn(batch: dict[str, list]) -> dict[str, np.ndarray]:
        return {"embedding": embed_batch(batch)}

    if rank == 0 and len(dataset) >= _LOGGED_SIZE and not datasets.is_progress_bar_enabled():
        logger.info("%s: %d", desc.lower(), len(dataset))  # the one line that stands for the bar
    # One progress bar (rank 0's), not one per process.
    quiet = rank != 0 and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        local = _read_or_embed(shard, _fn, batch_size, desc, map_kwargs)
    finally:
        if quiet:
            datasets.enable_progress_bars()
    return _gather_in_order(local, world_size)


def _embed_directly(
    dataset: datasets.Dataset, embed_batch: Callable[[dict[str, list]], np.ndarray], batch_size: int, desc: str
) -> np.ndarray:
    """The same consecutive batches ``datasets.map`` would feed ``embed_batch``, without its machinery
    (a Dataset written per call, fingerprints): nothing to cache and one process, so nothing to gain
    from it, and a service embeds a few queries per call."""
    from tqdm.auto import tqdm

    columns = dataset.to_dict()
    n = len(dataset)
    bar = tqdm(total=n, desc=desc, unit=" examples", disable=n <= batch_size or not datasets.is_progress_bar_enabled())
    parts = []
    try:
        for start in range(0, n, batch_size):
            parts.append(np.asarray(embed_batch({k: v[start : start + batch_size] for k, v in columns.items()})))
            bar.update(min(batch_size, n - start))
    finally:
        bar.close()
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)


def _embeddings(out: datasets.Dataset, expected_rows: int) -> np.ndarray:
    """The ``embedding`` column as float32 ``[rows, D]``; ``ValueError`` when it is not that (a damaged
    or foreign cache file: wrong row count or ragged rows). Non-finite values are the evaluator's to
    report (a diverged model), not a cache problem."""
    if len(out) != expected_rows or (expected_rows and "embedding" not in out.column_names):
        raise ValueError(f"{len(out)} rows for {expected_rows} inputs")
    if not expected_rows:
        return np.zeros((0, 0), dtype=np.float32)
    local = np.asarray(out.with_format("numpy")["embedding"], dtype=np.float32)
    if local.ndim != 2:
        raise ValueError(f"embeddings of shape {local.shape}")
    return local


def _read_or_embed(shard: datasets.Dataset, fn: Callable, batch_size: int, desc: str, map_kwargs: dict) -> np.ndarray:
    """``shard.map`` (a cache hit when the fingerprint's file exists); a cache file that cannot be read
    or does not hold these inputs' embeddings is deleted, said, and the embeddings computed again."""
    from cnclip_lora.utils.caches import read_or_rebuild

    cache_file = map_kwargs.get("cache_file_name")

    def run(reuse: bool) -> np.ndarray:
        kwargs = {**map_kwargs, "load_from_cache_file": reuse} if cache_file else map_kwargs
        out = shard.map(
            fn, batched=True, batch_size=batch_size, remove_columns=shard.column_names, desc=desc, **kwargs
        )
        return _embeddings(out, len(shard))

    if cache_file is None:
        return run(False)
    existing = lambda: [Path(cache_file)] if Path(cache_file).exists() else []  # noqa: E731
    return read_or_rebuild(run, existing, "embedding cache file", "computing the embeddings")


def _normalise(embeds: torch.Tensor) -> np.ndarray:
    embeds = embeds.float()
    return torch.nn.functional.normalize(embeds, dim=-1).cpu().numpy()


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    titles: Sequence[str],
    *,
    preprocessing: Preprocessing,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    pad_to_max_length: bool = False,
) -> np.ndarray:
    """L2-normalised text embeddings ``[len(titles), D]`` (float32, input order).

    The building block of :meth:`cnclip_lora.inference.model.RetrievalModel.encode_texts`; it takes
    the whole recorded preprocessing (title preparation and length), never loose fields of it.

    Args:
        model: a ChineseCLIPModel (plain, PEFT-wrapped or merged); put in eval mode here.
        fingerprint: with ``cache_dir``, names the cache file; must change whenever the model or
            the inputs change (see :meth:`cnclip_lora.inference.model.RetrievalModel.fingerprint`).
        pad_to_max_length: pad every batch to ``max_length`` (a compiled model's static shape)
            rather than to its longest title; the embeddings are the same either way.
    """
    model.eval()
    device = _model_device(model)

    @torch.inference_mode()
    def embed_batch(batch: dict[str, list]) -> np.ndarray:
        enc = tokenize_titles(
            batch["title"],
            tokenizer,
            preprocessing.max_length,
            preprocessing.title_normalization,
            pad_to_max_length=pad_to_max_length,
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        return _normalise(get_text_embeds(model, **enc))

    dataset = datasets.Dataset.from_dict({"title": list(titles)})
    return _map_embed(
        dataset,
        embed_batch,
        batch_size=batch_size,
        cache_dir=cache_dir,
        fingerprint=fingerprint,
        desc="Embedding titles",
    )


def embed_images(
    model: torch.nn.Module,
    image_processor: Any,
    images: Sequence[Any],
    *,
    preprocessing: Preprocessing,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    num_threads: int | None = None,
    pixel_cache: Any = None,
) -> np.ndarray:
    """L2-normalised image embeddings ``[len(images), D]`` (files or PIL images) with the recorded preprocessing.

    Decoding runs ahead: while the model embeds one batch, a small thread pool (PIL releases the
    GIL while decoding and resizing) already decodes the next, so decoding and the forward pass
    overlap instead of alternating. torch's own thread count is left as the caller set it
    (lowering it to make room for the decoders measured slower, see benchmarks/RESULTS.md).

    Args:
        num_threads: decoding threads; default half the cores, 1 to 4.
        pixel_cache: a :class:`cnclip_lora.training.pixel_cache.PixelCache` holding ``images`` (paths, as given):
            their resized pixels are read from it instead of decoding (the Trainer's evaluation
            embeds the same validation gallery at every evaluation).
    """
    model.eval()
    device = _model_device(model)
    dtype = next(model.parameters()).dtype
    n_threads = max(1, num_threads or min(4, (os.cpu_count() or 1) // 2))
    all_items = [p if hasattr(p, "mode") else os.fspath(p) for p in images]  # PIL images as they are
    pool = ThreadPoolExecutor(max_workers=n_threads)
    ahead: dict[tuple[int, int], list[Future]] = {}  # (start, stop) -> decoding batch

    def _prep(chunk: list[str]) -> torch.Tensor:
        if pixel_cache is not None:
            flips = [preprocessing.inference_flip] * len(chunk)
            return pixel_values_from_uint8(pixel_cache.get(chunk), flips, image_processor)
        return preprocess_images(chunk, image_processor, flips=preprocessing.inference_flip, draft=preprocessing.draft)

    def _submit(start: int, stop: int) -> list[Future]:
        step = -(-(stop - start) // n_threads)
        return [pool.submit(_prep, all_items[i : min(i + step, stop)]) for i in range(start, stop, step)]

    @torch.inference_mode()
    def embed_batch(batch: dict[str, list]) -> np.ndarray:
        rows = batch["row"]
        start, stop = rows[0], rows[-1] + 1
        if stop - start != len(rows):  # not a contiguous slice: decode what was asked, no read-ahead
            futures = [pool.submit(_prep, [all_items[r] for r in rows])]
        else:
            futures = ahead.pop((start, stop), None) or _submit(start, stop)
            # Map batches are consecutive slices of equal size: start the next one now.
            nxt = (stop, min(stop + len(rows), len(all_items)))
            if nxt[0] < nxt[1] and nxt not in ahead:
                ahead.clear()
                ahead[nxt] = _submit(*nxt)
        pixel_values = torch.cat([f.result() for f in futures])
        return _normalise(get_image_embeds(model, pixel_values.to(device=device, dtype=dtype)))

    dataset = datasets.Dataset.from_dict({"row": list(range(len(all_items)))})
    try:
        return _map_embed(
            dataset,
            embed_batch,
            batch_size=batch_size,
            cache_dir=cache_dir,
            fingerprint=fingerprint,
            desc="Embedding images",
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
