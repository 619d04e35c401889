"""The package destroys the process groups it created, and only those."""

from __future__ import annotations

import socket

import torch
from dist_utils import needs_gloo

from cnclip_lora.utils.distributed import (
    adopt_new_process_group,
    group_exists,
    join_launch_group,
    rank_and_world,
    release_process_group,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_gloo
def test_a_group_the_caller_created_is_left_alone():
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        existed = group_exists()
        join_launch_group()  # a group exists: nothing to join
        assert rank_and_world() == (0, 1)  # the caller's group
        assert group_exists()
        adopt_new_process_group(existed)
        assert release_process_group() is False
        assert group_exists()
    finally:
        torch.distributed.destroy_process_group()


@needs_gloo
def test_a_group_created_inside_the_package_is_destroyed():
    existed = group_exists()
    assert not existed
    # Stands for the launcher join inside join_launch_group / the Trainer.
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    adopt_new_process_group(existed)
    assert release_process_group() is True
    assert not group_exists()
    assert release_process_group() is False  # idempotent (the exit hook may run after an explicit call)


def test_nothing_to_release_without_a_group():
    adopt_new_process_group(existed_before=False)
    assert release_process_group() is False


def test_rank_and_world_reads_the_launcher_without_joining_or_importing_torch():
    """The getter answers from RANK/WORLD_SIZE before any group exists, creates none, and needs no torch."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from cnclip_lora.utils.distributed import group_exists, is_main_process, rank_and_world\n"
        "print(json.dumps([rank_and_world(), rank_and_world(group_only=True), is_main_process(),\n"
        "                  group_exists(), 'torch' in sys.modules]))\n"
    )
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[1, 2], [0, 1], False, False, False]
