"""This process's rank, the process groups this package creates, and their clean release at exit.

:func:`rank_and_world` is the one answer to "which process am I": it reads, never creates, and
imports nothing heavy (the CLI asks it before torch is loaded). A ``torchrun`` launch of
``retrieve``/``evaluate`` joins a process group inside the package (:func:`join_launch_group`), and
``train`` makes the Trainer join one. A group
left alive at interpreter exit is torn down by static destructors while gloo's threads still run,
which can abort a rank (``terminate called without an active exception``) after all its work:
a finished job reported as failed. Each group the package created is therefore destroyed at
exit, after a barrier so no rank tears down a connection another one still uses. A group the
caller created before calling the package is never touched.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta

__all__ = [
    "rank_and_world",
    "is_main_process",
    "join_launch_group",
    "group_exists",
    "adopt_new_process_group",
    "release_process_group",
]

logger = logging.getLogger(__name__)

_owned = False
_registered = False
# A rank whose peer already died must not wait forever at the exit barrier.
_EXIT_BARRIER_TIMEOUT = timedelta(seconds=60)


def group_exists() -> bool:
    """Whether the default ``torch.distributed`` process group is initialised (``False`` before torch is imported:
    no group can exist then)."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    return dist is not None and dist.is_available() and dist.is_initialized()


def rank_and_world(*, group_only: bool = False) -> tuple[int, int]:
    """``(rank, world_size)`` of this process: the process group's when one exists, else the launcher's
    (``RANK``/``WORLD_SIZE`` set by ``torchrun``, ``accelerate launch``), else ``(0, 1)``.

    Args:
        group_only: answer from the process group alone, ``(0, 1)`` without one: the world that
            collective operations (gathers) can actually reach.

    Reads only: it neither joins a group nor imports torch.
    """
    if group_exists():
        dist = sys.modules["torch"].distributed
        return dist.get_rank(), dist.get_world_size()
    if group_only:
        return 0, 1
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0: under a launcher every process runs the command, and only this one reports."""
    return rank_and_world()[0] == 0


def join_launch_group() -> None:
    """Join the launcher's process group when launched as several processes and none exists yet.

    Retrieval runs outside the Trainer, so nothing else would: without a group every process
    would embed everything alone. ``accelerate.PartialState`` joins it and pins each process to
    its own GPU; gloo is used on machines without CUDA. The group is the package's (released at
    exit, see :func:`adopt_new_process_group`). No-op in a single process or when a group exists.
    """
    import torch

    if group_exists() or not torch.distributed.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from accelerate import PartialState

    # PartialState() alone finds no backend on a CPU-only machine and stays single-process.
    PartialState(cpu=not torch.cuda.is_available())
    adopt_new_process_group(existed_before=False)  # ours: destroyed at exit


def adopt_new_process_group(existed_before: bool) -> None:
    """Mark the default group as the package's when it did not exist before the package's call.

    Args:
        existed_before: :func:`group_exists` taken before the package code that may have created it.
    """
    global _owned, _registered
    if existed_before or not group_exists():
        return
    _owned = True
    if not _registered:
        atexit.register(release_process_group)
        _registered = True


def release_process_group() -> bool:
    """Destroy the default group if the package created it; ``True`` if one was destroyed.

    Runs at interpreter exit (registered by :func:`adopt_new_process_group`); safe to call earlier.
    accelerate's shared state is reset too, so a later call in the same process starts afresh.
    """
    global _owned
    if not _owned or not group_exists():
        _owned = False
        return False
    _owned = False
    import gc

    import torch

    # Objects in reference cycles (a Trainer and its DDP-wrapped model) would otherwise outlive
    # the group and be torn down at interpreter exit with their communication threads running
    # ("terminate called without an active exception"): free them while the group still exists.
    gc.collect()
    dist = torch.distributed
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=_EXIT_BARRIER_TIMEOUT)
        else:
            dist.barrier()
    except Exception as err:  # a peer that already failed: still release this rank's resources
        logger.debug("exit barrier failed: %s", err)
    dist.destroy_process_group()
    try:
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    except Exception as err:  # accelerate's private reset moved: the group itself is gone already
        logger.debug("could not reset accelerate's state: %s", err)
    return True
