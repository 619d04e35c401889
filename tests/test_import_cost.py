"""The light entry points stay light: importing the package, the top-level help, ``check-data``
and ``make-demo-data`` never import torch or transformers (each costs seconds before any work).

Each case runs in a fresh interpreter, then reports which heavy modules ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_lora.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets")

_REPORT = f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"

#: Runs ``cnclip-lora ARGV`` (given as JSON in sys.argv[1]); prints the exit status, then the heavy modules.
_CLI = (
    """
import contextlib, io, json, sys
from cnclip_lora.commands import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(json.loads(sys.argv[1]))
    except SystemExit as exit_:  # argparse, after --help
        status = exit_.code
print(status)
"""
    + _REPORT
)


def _python(code: str, *args: str, cwd: Path = ROOT) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def _cli(*argv: str, cwd: Path = ROOT) -> tuple[int, list[str]]:
    """``(exit status, heavy modules imported)`` of one command in a fresh interpreter."""
    status, heavy = _python(_CLI, json.dumps(argv), cwd=cwd)[-2:]
    return int(status), json.loads(heavy)


def test_import_cnclip_lora_imports_neither_torch_nor_transformers():
    lines = _python("import json, sys\nimport cnclip_lora\nprint(cnclip_lora.__version__)\n" + _REPORT)
    assert json.loads(lines[-1]) == []


def test_top_level_help_and_version_are_light():
    assert _cli("--help") == (0, [])
    assert _cli("--version") == (0, [])


#: Every verb whose options do not extend TrainingArguments.
NOT_TRAIN = [name for name in COMMANDS if name != "train"]


@pytest.mark.parametrize("command", NOT_TRAIN)
def test_every_verbs_help_is_light(command):
    assert _cli(command, "--help") == (0, [])


def test_train_help_imports_no_more_than_training_arguments():
    """``train --help`` needs TrainingArguments (transformers imports torch and peft with it), nothing more."""
    status, heavy = _cli("train", "--help")
    reference = json.loads(_python("import json, sys\nfrom transformers import TrainingArguments\n" + _REPORT)[-1])
    assert status == 0 and set(heavy) <= set(reference)


@pytest.mark.parametrize("name", ["recall_at_k", "true_ranks", "recall_from_ranks", "rank"])
def test_numpy_level_api_names_import_light(name):
    lines = _python(f"import json, sys\nfrom cnclip_lora import {name}\n" + _REPORT)
    assert json.loads(lines[-1]) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["retrieve", "--output", "s.csv"],
        ["evaluate"],
        ["report"],
        ["serve"],
        ["export-onnx", "out"],
    ],
)
def test_a_mistyped_model_folder_is_reported_before_any_heavy_import(argv, tmp_path):
    (tmp_path / "tiny-model").mkdir()
    status, heavy = _cli(*argv, "--model_name_or_path", str(tmp_path / "tiny-modle"), cwd=tmp_path)
    assert status == 2
    assert heavy == []


def test_make_demo_data_then_check_data_never_import_torch(tmp_path):
    data = tmp_path / "data"
    made = _cli(
        "make-demo-data",
        str(data),
        "--n_train",
        "20",
        "--n_queries",
        "5",
        "--n_distractors",
        "5",
        "--image_size",
        "32",
        cwd=tmp_path,
    )
    assert made == (0, [])
    assert (data / "train.csv").is_file()
    assert _cli("check-data", str(data), cwd=tmp_path) == (0, [])


def test_check_data_reporting_bad_data_never_imports_torch(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "train.csv").write_text("title\tpath\n红色T恤\tmissing.jpg\n", encoding="utf-8")
    (tmp_path / "test_query.csv").write_text("title\n查询\n", encoding="utf-8")
    status, heavy = _cli("check-data", str(tmp_path), cwd=tmp_path)
    assert status != 0
    assert heavy == []
