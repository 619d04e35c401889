"""The package destroys the process groups it created, and only those."""

from __future__ import annotations

import socket

import torch
from dist_utils import needs_gloo

from cnclip_lora.utils.distributed import adopt_new_process_group, group_exists, release_process_group
from cnclip_lora.retrieve.embed import process_info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_gloo
def test_a_group_the_caller_created_is_left_alone():
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        existed = group_exists()
        assert process_info() == (0, 1)  # uses the caller's group
        adopt_new_process_group(existed)
        assert release_process_group() is False
        assert group_exists()
    finally:
        torch.distributed.destroy_process_group()


@needs_gloo
def test_a_group_created_inside_the_package_is_destroyed():
    existed = group_exists()
    assert not existed
    # Stands for the launcher join inside process_info / the Trainer.
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    adopt_new_process_group(existed)
    assert release_process_group() is True
    assert not group_exists()
    assert release_process_group() is False  # idempotent (the exit hook may run after an explicit call)


def test_nothing_to_release_without_a_group():
    adopt_new_process_group(existed_before=False)
    assert release_process_group() is False


