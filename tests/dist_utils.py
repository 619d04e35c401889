"""Helpers for tests that start several CPU processes with torchrun (gloo).

``accelerate launch --cpu --num_processes 2`` started a single process on this kind of machine;
``python -m torch.distributed.run --standalone`` reliably starts two, each with its own free port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

__all__ = ["needs_gloo", "run_torchrun", "stray_files"]

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


def run_torchrun(args: Sequence[str], *, nproc: int = 2, cwd: Path | None = None, timeout: int = 300) -> str:
    """Run ``torchrun --standalone --nproc_per_node nproc ARGS``; fail the test with its output tail.

    One thread per process: two processes on two cores, oversubscribed, would be far slower.
    Returns the combined output.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *map(str, args),
    ]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}:\n{failure_excerpt(output)}"
    # A thread or group alive at interpreter exit aborts a rank after its work is done; that is a
    # failure even when the exit status hides it.
    assert "terminate called" not in output, failure_excerpt(output)
    return output


def failure_excerpt(output: str, limit: int = 4000) -> str:
    """The first worker traceback and the output's tail: torchrun's own summary at the end of a
    failed launch (ChildFailedError) buries the rank's error that caused it."""
    start = output.find("Traceback (most recent call last)")
    head = output[start : start + limit] if start >= 0 else ""
    tail = output[-limit:]
    if not head or head in tail:
        return tail
    return f"{head}\n[...]\n{tail}"


def stray_files(root: Path) -> list[str]:
    """Temporary or hidden files left under ``root`` (a crashed or duplicated write leaves these)."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")
    )
