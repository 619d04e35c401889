"""A training sampler that never puts two captions of the same image in one contrastive batch.

``train.csv`` may give one image several titles (allowed: several captions per image). The
contrastive loss treats every other image of the batch as a negative, so two rows of the same
image in one batch make each the other's *false negative*: the loss pushes a title away from its
own image. :class:`UniqueImageSampler` orders each epoch so that every global batch (the rows all
processes see in one step) holds each image at most once.

How batches are formed downstream, and why the sampler works on *global* batches: the Trainer
wraps a sampler in a ``BatchSampler`` of the per-device batch size ``B``; under several processes
accelerate's ``BatchSamplerShard`` gives batch ``i`` to process ``i % W``. So the rows of step ``t``
across all ``W`` processes are exactly positions ``[t*B*W, (t+1)*B*W)`` of the sampler's order,
and keeping each such group of ``B*W`` positions duplicate-free keeps every per-process batch and
the gathered global batch duplicate-free.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["UniqueImageSampler", "has_duplicate_images", "unique_image_sampler_for"]

logger = logging.getLogger(__name__)


def has_duplicate_images(paths: Sequence[str]) -> bool:
    """True when some image appears in more than one row."""
    return len(set(paths)) < len(paths)


def _groups_for(counts: np.ndarray, group_size: int) -> tuple[int, np.ndarray]:
    """``(cap, kept)``: how many rows of each image fit when no group may hold it twice.

    An image can appear in at most one row per group, so it keeps at most ``cap`` rows, where
    ``cap`` is the number of groups; dropping rows can shrink the group count, hence the loop
    (it only decreases, so it ends).
    """
    n = int(counts.sum())
    cap = max(1, n // group_size)
    while True:
        kept = np.minimum(counts, cap)
        new_cap = max(1, int(kept.sum()) // group_size)
        if new_cap >= cap:
            return cap, kept
        cap = new_cap


class UniqueImageSampler(torch.utils.data.Sampler[int]):
    """Row order in which each consecutive group of ``group_size`` rows names each image once.

    Each epoch is a fresh shuffle that depends only on ``(seed, epoch)``, so every process builds
    the same order and a resumed run replays the interrupted epoch exactly. Every row is used
    once per epoch whenever possible; only an image with more captions than there are groups in
    an epoch cannot be spread, and its surplus captions (chosen at random, so different ones each
    epoch) are left out: :attr:`num_unplaced` counts them. A final partial group, if any, comes
    last (``dataloader_drop_last`` drops it).

    Args:
        paths: The image of every dataset row (``train_dataset["path"]``).
        group_size: Rows per global batch: per-device batch size x number of processes.
        seed: Base seed of the shuffle (use the run's ``data_seed``/``seed``).

    Example::

        sampler = UniqueImageSampler(["a.jpg", "a.jpg", "b.jpg", "c.jpg"], group_size=2, seed=0)
        order = list(sampler)   # e.g. [2, 0, 1, 3]: "a.jpg" never twice in [0:2] or [2:4]
    """

    def __init__(self, paths: Sequence[str], group_size: int, seed: int = 0):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.epoch = 0
        rows_by_image: dict[str, list[int]] = defaultdict(list)
        for row, path in enumerate(paths):
            rows_by_image[path].append(row)
        # Sorted so the order depends on the data, not on dict insertion.
        self._images = sorted(rows_by_image)
        self._rows = [np.asarray(rows_by_image[p], dtype=np.int64) for p in self._images]
        counts = np.asarray([len(r) for r in self._rows], dtype=np.int64)
        self._cap, self._kept = _groups_for(counts, self.group_size) if len(counts) else (1, counts)
        self.num_rows = int(counts.sum())
        self.num_images = len(self._images)
        self.max_captions = int(counts.max()) if len(counts) else 0
        #: Most rows of one image an epoch can hold (one per global batch).
        self.max_per_epoch = int(self._cap)
        self.num_samples = int(self._kept.sum())
        self.num_unplaced = self.num_rows - self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (called by the Trainer/accelerate each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def order(self, epoch: int | None = None) -> list[int]:
        """The row order of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        n, size = self.num_samples, self.group_size
        if n == 0:
            return []
        # Each image's kept rows, chosen at random among its captions.
        picked = [rng.permutation(rows)[:k] for rows, k in zip(self._rows, self._kept)]
        # Most-captioned images first (ties in random order), then dealt round-robin over the
        # groups: an image's rows are consecutive in the deal, and a run of at most `cap` deals
        # never reaches the same group twice, so no group gets an image twice.
        tiebreak = rng.permutation(len(picked))
        by_count = np.lexsort((tiebreak, -self._kept))
        stream = np.concatenate([picked[i] for i in by_count])
        n_full, rem = divmod(n, size)
        n_groups = n_full + (1 if rem else 0)
        groups: list[list[int]] = [[] for _ in range(n_groups)]
        capacity = [size] * n_full + ([rem] if rem else [])
        position = 0
        while position < n:
            for g in range(n_groups):
                if len(groups[g]) < capacity[g] and position < n:
                    groups[g].append(int(stream[position]))
                    position += 1
        # Shuffle full groups among themselves and rows within each group; the partial group
        # stays last so the batch boundaries downstream line up with the groups.
        full_order = rng.permutation(n_full)
        ordered = [groups[g] for g in full_order] + ([groups[-1]] if rem else [])
        out: list[int] = []
        for group in ordered:
            out.extend(int(x) for x in rng.permutation(group))
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())


def unique_image_sampler_for(
    dataset: Any,
    *,
    batch_size: int,
    world_size: int,
    seed: int,
    mode: bool | None,
) -> UniqueImageSampler | None:
    """The sampler the trainer should use, or ``None`` for the Trainer's default random one.

    Args:
        dataset: The training ``datasets.Dataset`` (needs a ``path`` column; a ``group`` column,
            when present, is the unit instead: rows of one group -- a text with several relevant
            images and the texts sharing them -- never meet in one global batch).
        batch_size: Per-device training batch size.
        world_size: Number of training processes.
        seed: Shuffle seed.
        mode: ``--unique_images_per_batch``: ``True`` always, ``False`` never, ``None`` (auto) only
            when some image has several captions.
    """
    if mode is False or dataset is None or "path" not in getattr(dataset, "column_names", ()):
        return None
    column = "group" if "group" in dataset.column_names else "path"
    paths = [str(p) for p in dataset[column]]
    if mode is None and not has_duplicate_images(paths):
        return None
    sampler = UniqueImageSampler(paths, group_size=batch_size * max(1, world_size), seed=seed)
    unit = "groups (a text's images, and texts sharing one)" if column == "group" else "images"
    logger.info(
        "unique_images_per_batch: %d rows of %d %s in global batches of %d without repeats",
        sampler.num_rows,
        sampler.num_images,
        unit,
        sampler.group_size,
    )
    if sampler.num_unplaced:
        logger.warning(
            "unique_images_per_batch: %d caption row(s) per epoch left out: some images have more captions "
            "(max %d) than an epoch has batches (%d); a different subset is left out each epoch",
            sampler.num_unplaced,
            sampler.max_captions,
            sampler.max_per_epoch,
        )
    return sampler
