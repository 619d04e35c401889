"""Quiet by default, complete when asked: a demo-sized train and retrieve say each thing once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PROGRESS = re.compile(r"\d+%\||it/s|s/it|examples/s")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="default")  # show every warning once per place
    return subprocess.run(
        [sys.executable, "-m", "cnclip_lora", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    """Every printed line, progress-bar redraws left out (they legitimately repeat)."""
    text = proc.stdout + "\n" + proc.stderr
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip() and not _PROGRESS.search(line)]


def _assert_quiet(proc: subprocess.CompletedProcess) -> list[str]:
    lines = _lines(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Output to a pipe (CI, nohup, a file): no progress bar redraws, one line per thing.
    text = proc.stdout + proc.stderr
    assert "\r" not in text and not _PROGRESS.search(text), [ln for ln in text.splitlines() if _PROGRESS.search(ln)][
        :3
    ]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated
    text = "\n".join(lines)
    for noise in ("FutureWarning", "DeprecationWarning", "non_blocking", "faiss.loader", "Traceback"):
        assert noise not in text, noise
    return lines


def test_train_and_retrieve_print_each_line_once(tmp_path, tiny_model_dir, demo_dir):
    out = tmp_path / "run"
    train = _run(
        "train",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(demo_dir),
        "--output_dir",
        str(out),
        "--use_cpu",
        "true",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--lora_r",
        "4",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--dataloader_num_workers",
        "0",
    )
    lines = _assert_quiet(train)
    assert sum("eval_t2i_MR" in line for line in lines) == 1, lines  # end-of-training metrics once
    assert sum("train_runtime" in line for line in lines) == 1, lines
    assert sum("training pairs:" in line for line in lines) == 1  # the data summary, as a table
    assert max(len(line) for line in lines if "INFO" in line) < 200
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "cnclip-lora" in card and "More Information Needed" not in card  # the package's card, not peft's

    retrieve = _run(
        "retrieve",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--adapter",
        str(out),
        "--data_dir",
        str(demo_dir),
        "--output",
        str(tmp_path / "submit.csv"),
        "--device",
        "cpu",
        "--use_faiss",
        "true",
        "--cache_dir",
        "",
    )
    lines = _assert_quiet(retrieve)
    assert sum("submission written" in line for line in lines) == 1

    quiet = _run(
        "retrieve",
        "--log_level",
        "warning",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--adapter",
        str(out),
        "--data_dir",
        str(demo_dir),
        "--output",
        str(tmp_path / "submit2.csv"),
        "--device",
        "cpu",
        "--cache_dir",
        "",
    )
    assert quiet.returncode == 0 and not any(line.startswith("INFO ") for line in _lines(quiet))
    assert (tmp_path / "submit2.csv").read_bytes() == (tmp_path / "submit.csv").read_bytes()


def test_replica_processes_log_warnings_only(tmp_path):
    code = (
        "import logging, os; os.environ['RANK']='1'\n"
        "from cnclip_lora.utils.log_setup import setup_logging\n"
        "setup_logging('info'); setup_logging('info')\n"
        "logging.getLogger('cnclip_lora.x').info('hidden'); logging.getLogger('cnclip_lora.x').warning('shown')\n"
        "import transformers; transformers.utils.logging.get_logger('transformers.y').warning('lib')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["WARNING cnclip_lora.x: shown", "WARNING transformers.y: lib"], lines
