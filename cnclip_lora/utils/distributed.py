"""Process groups this package creates, and their clean release at exit.

A ``torchrun`` launch of ``retrieve``/``evaluate`` joins a process group inside the package
(:func:`cnclip_lora.retrieve.embed.process_info`), and ``train`` makes the Trainer join one. A group
left alive at interpreter exit is torn down by static destructors while gloo's threads still run,
which can abort a rank (``terminate called without an active exception``) after all its work:
a finished job reported as failed. Each group the package created is therefore destroyed at
exit, after a barrier so no rank tears down a connection another one still uses. A group the
caller created before calling the package is never touched.
"""

from __future__ import annotations

import atexit
import logging
from datetime import timedelta

import torch

__all__ = ["group_exists", "adopt_new_process_group", "release_process_group"]

logger = logging.getLogger(__name__)

_owned = False
_registered = False
# A rank whose peer already died must not wait forever at the exit barrier.
_EXIT_BARRIER_TIMEOUT = timedelta(seconds=60)


def group_exists() -> bool:
    """Whether the default ``torch.distributed`` process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


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
