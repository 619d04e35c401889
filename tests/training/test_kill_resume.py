"""Interrupted training: SIGKILL mid-epoch, resume, and end with the uninterrupted run's adapter.

Also: a checkpoint folder left half-written by a killed process is never taken as the latest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnclip_lora.errors import ConfigError
from cnclip_lora.utils.files import checkpoint_problem, latest_complete_checkpoint, resolve_resume_checkpoint

MAX_STEPS, SAVE_STEPS, KILL_AFTER = 12, 2, 10  # 8 steps an epoch: killed mid-epoch 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Tiny model + a 64-row training set where 16 images have a second caption (so the
    unique-image sampler is on and its replay on resume is tested too)."""
    from cnclip_lora.demo.data import make_demo_data
    from cnclip_lora.demo.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("kill-resume")
    make_tiny_model(root / "model", seed=0)
    make_demo_data(root / "data", seed=3, n_train=48, n_queries=4, n_distractors=4, image_size=64)
    train_csv = root / "data" / "train.csv"
    lines = train_csv.read_text(encoding="utf-8").splitlines()
    extra = [f"另一种描述{i}号新款\t{line.split(chr(9))[1]}" for i, line in enumerate(lines[1:17])]
    train_csv.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    return root


def _command(root: Path, out: Path, *extra: str) -> list[str]:
    flags = {
        "model_name_or_path": root / "model",
        "data_dir": root / "data",
        "output_dir": out,
        "max_steps": MAX_STEPS,
        "save_strategy": "steps",
        "save_steps": SAVE_STEPS,
        "save_total_limit": 10,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "val_size": 0,
        "dataloader_num_workers": 0,
        "seed": 0,
        "use_cpu": "true",
        "report_to": "none",
        "logging_steps": 1,
        "check_images": "false",
        # The default --flip random: flips are fixed by (seed, epoch, row), so they replay too.
    }
    argv = [sys.executable, "-m", "cnclip_lora", "train"]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv + list(extra)


def _env() -> dict[str, str]:
    # One thread everywhere: identical reductions in every run, and kinder to small CI machines.
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(workdir, tmp_path):
    full_out, killed_out = tmp_path / "full", tmp_path / "killed"
    log_full = open(tmp_path / "full.log", "w")
    log_killed = open(tmp_path / "killed.log", "w")
    # Both runs start together: the reference run costs no extra wall time.
    full = subprocess.Popen(_command(workdir, full_out), stdout=log_full, stderr=subprocess.STDOUT, env=_env())
    victim = subprocess.Popen(_command(workdir, killed_out), stdout=log_killed, stderr=subprocess.STDOUT, env=_env())
    checkpoint = killed_out / f"checkpoint-{KILL_AFTER}"
    deadline = time.monotonic() + 300
    try:
        while checkpoint_problem(checkpoint) is not None:  # complete, not merely started
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)  # mid-epoch: the second epoch's steps are 9-16
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_out / "adapter_model.safetensors").exists(), "the killed run must not have finished"
    assert (killed_out / f"checkpoint-{KILL_AFTER}" / "adapter_model.safetensors").is_file()

    # A checkpoint that was being written when the process died: weights but no trainer_state.json.
    half = killed_out / "checkpoint-999"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    latest, skipped = latest_complete_checkpoint(killed_out)
    assert latest is not None and latest.name.startswith("checkpoint-") and half in skipped
    assert int(latest.name.split("-")[1]) >= KILL_AFTER

    resumed = subprocess.run(
        _command(workdir, killed_out, "--resume_from_checkpoint", "true"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping {half}" in resumed.stderr
    assert full.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()[-3000:]
    log_full.close()
    log_killed.close()

    reference = load_file(full_out / "adapter_model.safetensors")
    result = load_file(killed_out / "adapter_model.safetensors")
    assert reference.keys() == result.keys() and reference
    for name, tensor in reference.items():
        torch.testing.assert_close(result[name], tensor, atol=1e-6, rtol=0, msg=name)
    # The same batches in the same order: every logged loss agrees, before and after the kill.
    losses_full, losses_resumed = _losses(full_out), _losses(killed_out)
    assert sorted(losses_resumed) == list(range(1, MAX_STEPS + 1))
    for step, loss in losses_full.items():
        assert losses_resumed[step] == pytest.approx(loss, abs=1e-5), step
    # The adapter really trained (equality of two untrained adapters would prove nothing).
    start = load_file(killed_out / f"checkpoint-{SAVE_STEPS}" / "adapter_model.safetensors")
    assert any(not torch.equal(start[k], reference[k]) for k in reference)


# --------------------------------------------------------------- checkpoint picking (no training)


def _fake_checkpoint(out: Path, step: int, *, state: str | None = "ok", weights: bool = True) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "truncated":
        (folder / "trainer_state.json").write_text('{"global_step": ')
    return folder


def test_half_written_checkpoints_are_never_the_latest(tmp_path):
    good = _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 6, state=None)
    _fake_checkpoint(tmp_path, 8, state="truncated")
    _fake_checkpoint(tmp_path, 12, weights=False)
    _fake_checkpoint(tmp_path, 999, state=None)
    (tmp_path / "checkpoint-1000").write_text("a file, not a folder")
    latest, skipped = latest_complete_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoint-10"
    assert [p.name for p in skipped] == ["checkpoint-999", "checkpoint-12"]
    assert checkpoint_problem(good) is None
    assert "no trainer_state.json" in checkpoint_problem(tmp_path / "checkpoint-6")
    assert "unreadable" in checkpoint_problem(tmp_path / "checkpoint-8")
    assert "no safetensors weights" in checkpoint_problem(tmp_path / "checkpoint-12")


def test_transformers_own_lookup_would_pick_the_broken_one(tmp_path):
    """Why the package resolves `true` itself: the Trainer's lookup only reads folder names."""
    from transformers.trainer_utils import get_last_checkpoint

    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4, state=None)
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    assert resolve_resume_checkpoint("true", tmp_path).endswith("checkpoint-2")


@pytest.mark.parametrize("value", [None, False, "", "false", "no"])
def test_resume_off_values(tmp_path, value):
    assert resolve_resume_checkpoint(value, tmp_path) is None


def test_resume_true_picks_latest_complete_and_paths_are_checked(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    broken = _fake_checkpoint(tmp_path, 6, state="truncated")
    for value in (True, "true", "True", "last"):
        assert resolve_resume_checkpoint(value, tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(
        ConfigError, match=r"checkpoint-6: not a complete checkpoint .*latest complete one is .*checkpoint-4"
    ):
        resolve_resume_checkpoint(str(broken), tmp_path)
    with pytest.raises(ConfigError, match="not a complete checkpoint \\(not a folder\\)"):
        resolve_resume_checkpoint(str(tmp_path / "nowhere"), tmp_path)


def test_resume_true_without_complete_checkpoint_is_a_clear_error(tmp_path):
    _fake_checkpoint(tmp_path, 2, state=None)
    with pytest.raises(ConfigError, match=r"no complete checkpoint-N folder in .* \(1 incomplete: checkpoint-2\)"):
        resolve_resume_checkpoint(True, tmp_path)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_resume_checkpoint("true", tmp_path / "missing-output-dir")


def test_step_mismatch_between_name_and_state_is_incomplete(tmp_path):
    folder = _fake_checkpoint(tmp_path, 4)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert "says step 2" in checkpoint_problem(folder)
