"""One output folder, one run: another run's files are refused up front, resumes check their
checkpoint's settings and say where they start, and Ctrl-C says how to resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnclip_lora.commands import main
from cnclip_lora.commands.train import train_from_argv
from cnclip_lora.utils.files import checkpoint_problem


def _flags(model: Path, data: Path, out: Path, **extra) -> list[str]:
    flags = {
        "model_name_or_path": model,
        "data_dir": data,
        "output_dir": out,
        "max_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "val_size": 0,
        "use_cpu": "true",
        "seed": 0,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "check_images": "false",
        "cache_images": "false",
        "logging_steps": 1,
    }
    flags.update(extra)
    argv: list[str] = []
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, demo_dir, tmp_path_factory) -> Path:
    """A finished 2-step run with r=4, saving a checkpoint at every step (adapter + checkpoint-1, -2)."""
    out = tmp_path_factory.mktemp("first") / "out"
    train_from_argv(_flags(tiny_model_dir, demo_dir, out))
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    return out


@pytest.fixture
def used_folder(first_run, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    return out


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(["train", *argv])
    return code, capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_other_lora_rank_in_a_used_folder_is_refused_before_data_or_model(
    tiny_model_dir, used_folder, tmp_path, capsys
):
    before = _snapshot(used_folder)
    # A data folder that does not exist: the refusal must come before the data (and so the model) is read.
    code, err = _cli(_flags(tiny_model_dir, tmp_path / "no-data", used_folder, lora_r=8), capsys)
    assert code == 2
    assert "lora_r 4 in checkpoint-2 vs 8 requested" in err
    assert "lora_r 4 in the adapter vs 8 requested" in err
    assert "--overwrite_output_dir true" in err
    assert "no-data" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(used_folder) == before  # nothing deleted or rewritten


def test_other_base_in_a_used_folder_is_refused(demo_dir, used_folder, tmp_path, capsys):
    from cnclip_lora.demo.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other-base", seed=0, image_size=32)
    code, err = _cli(_flags(other, demo_dir, used_folder), capsys)
    assert code == 2
    assert "base vision.image_size 64 in checkpoint-2 vs 32 requested" in err


def test_same_settings_fresh_start_is_refused_and_points_to_resume(tiny_model_dir, demo_dir, used_folder, capsys):
    code, err = _cli(_flags(tiny_model_dir, demo_dir, used_folder), capsys)
    assert code == 2
    assert "same settings" in err and "--resume_from_checkpoint true" in err and "checkpoint-1" in err


def test_adapter_without_record_is_compared_through_adapter_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "peft-only"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}))
    code, err = _cli(_flags(tiny_model_dir, tmp_path / "no-data", out), capsys)
    assert code == 2 and "lora_r 16 in the adapter vs 4 requested" in err


def test_overwrite_output_dir_replaces_the_old_run_and_keeps_other_files(
    tiny_model_dir, demo_dir, used_folder, capsys
):
    (used_folder / "notes.txt").write_text("mine")
    code, err = _cli(
        _flags(
            tiny_model_dir,
            demo_dir,
            used_folder,
            lora_r=8,
            lora_alpha=16,
            max_steps=1,
            save_strategy="no",
            overwrite_output_dir="true",
        ),
        capsys,
    )
    assert code == 0, err
    assert not list(used_folder.glob("checkpoint-*"))
    assert json.loads((used_folder / "adapter_config.json").read_text())["r"] == 8
    assert json.loads((used_folder / "trainer_state.json").read_text())["global_step"] == 1
    assert (used_folder / "notes.txt").read_text() == "mine"


def test_resume_with_other_lora_rank_is_one_line_naming_the_difference(tiny_model_dir, demo_dir, used_folder, capsys):
    code, err = _cli(
        _flags(tiny_model_dir, demo_dir, used_folder, lora_r=8, max_steps=4, resume_from_checkpoint="true"), capsys
    )
    assert code == 2
    assert "lora_r 4 in checkpoint-2 vs 8 requested" in err
    assert "Traceback" not in err and "size mismatch" not in err
    assert len(err.strip().splitlines()) == 1


def test_resume_with_other_base_is_refused(demo_dir, used_folder, tmp_path, capsys):
    from cnclip_lora.demo.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other-base", seed=0, image_size=32)
    code, err = _cli(_flags(other, demo_dir, used_folder, max_steps=4, resume_from_checkpoint="true"), capsys)
    assert code == 2 and "base vision.image_size 64 in checkpoint-2 vs 32 requested" in err


def test_resume_and_overwrite_together_are_refused(tiny_model_dir, demo_dir, used_folder, capsys):
    code, err = _cli(
        _flags(tiny_model_dir, demo_dir, used_folder, resume_from_checkpoint="true", overwrite_output_dir="true"),
        capsys,
    )
    assert code == 2 and "contradict" in err
    assert (used_folder / "checkpoint-2").is_dir()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def test_ctrl_c_says_how_to_resume_and_that_flag_resumes(tiny_model_dir, demo_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cnclip_lora",
        "train",
        *_flags(tiny_model_dir, demo_dir, out, max_steps=100000, save_total_limit=100),
    ]
    log = open(tmp_path / "run.log", "w+")
    # A shell that starts a job in the background (`cmd &`, as CI runners may) makes it ignore SIGINT, and
    # children inherit that; a user's Ctrl-C reaches a process with the default handler, so restore it.
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    try:
        while checkpoint_problem(out / "checkpoint-2") is not None:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:  # generous: a loaded CI machine can be slow to unwind a save and shut the interpreter down
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            tail = (tmp_path / "run.log").read_text()[-3000:]
            raise AssertionError(f"no exit within 300 s of Ctrl-C:\n{tail}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "run.log").read_text()
    assert code == 130, output[-3000:]
    assert "Traceback" not in output
    # One message, on its own line (not appended to the progress bar's).
    messages = [line for line in output.split("\n") if "interrupted" in line]
    assert len(messages) == 1, output[-3000:]
    last = messages[0]
    assert last.startswith("cnclip-lora train: interrupted: training stopped at step")
    assert "--resume_from_checkpoint true" in last and str(out / "checkpoint-") in last

    # The advice works: the same command plus the flag (with a reachable --max_steps) resumes,
    # and the log says from which checkpoint.
    step = int(last.split(str(out / "checkpoint-"))[1].split(",")[0].split()[0])
    argv = cmd[cmd.index("train") + 1 :] + ["--resume_from_checkpoint", "true", "--max_steps", str(step + 1)]
    resumed = subprocess.run(
        [sys.executable, "-m", "cnclip_lora", "train", *argv], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'} (step {step})" in resumed.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == step + 1


def test_resume_logs_its_checkpoint(tiny_model_dir, demo_dir, used_folder, caplog):
    caplog.set_level(logging.INFO, logger="cnclip_lora")
    train_from_argv(_flags(tiny_model_dir, demo_dir, used_folder, max_steps=3, resume_from_checkpoint="true"))
    assert f"resuming from {used_folder / 'checkpoint-2'} (step 2)" in caplog.text
