"""The command line: every --help works, input errors are one message and exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cnclip_lora.commands import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnclip_lora", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_exits_zero(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as exit_:  # argparse exits after printing help
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["frobnicate"]) == 2


def test_push_help_documents_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    out = capsys.readouterr().out
    for option in ("--repo_id", "--private", "--token", "--revision"):
        assert option in out


def test_check_data_on_the_committed_sample_passes_and_prints_counts():
    result = _run("check-data", "xfdata")
    assert result.returncode == 0, result.stderr
    import re

    train_rows = len(pd.read_csv(ROOT / "xfdata" / "train.csv", sep="\t"))
    n_train = int(re.search(r"training pairs:\s+(\d+)", result.stdout).group(1))
    n_val = int(re.search(r"validation pairs:\s+(\d+)", result.stdout).group(1))
    assert n_train + n_val == train_rows
    assert "gallery" in result.stdout.lower()
    assert result.stdout.rstrip().endswith("OK")


def test_check_data_on_bad_data_exits_nonzero_without_traceback(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "train.csv").write_text("title,path\n红色T恤,a.jpg\n", encoding="utf-8")
    (tmp_path / "test_query.csv").write_text("title\n查询\n", encoding="utf-8")
    result = _run("check-data", str(tmp_path))
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "train.csv" in text
    assert "Traceback" not in text


def test_train_input_error_is_one_message_and_exit_2(tmp_path, tiny_model_dir):
    result = _run(
        "train",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(tmp_path / "missing"),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing" in result.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_bad_lora_target_fails_before_training_naming_it(tmp_path, tiny_model_dir, demo_dir):
    result = _run(
        "train",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(demo_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
        "--lora_target_modules",
        "query,vision_model.emcoder.layers.0.self_attn.q_proj",
    )
    assert result.returncode == 2
    assert "emcoder" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_train_then_retrieve_end_to_end(tmp_path, tiny_model_dir, demo_dir):
    out = tmp_path / "adapter"
    trained = _run(
        "train",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(demo_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file()
    sub = tmp_path / "submit.csv"
    retrieved = _run(
        "retrieve",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--adapter",
        str(out),
        "--data_dir",
        str(demo_dir),
        "--output",
        str(sub),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    )
    assert retrieved.returncode == 0, retrieved.stderr[-2000:]
    assert "gallery_size" in retrieved.stdout
    assert len(pd.read_csv(sub)) == len(pd.read_csv(demo_dir / "test_query.csv"))


def test_cache_command_lists_and_clears_only_what_it_is_told(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    root = tmp_path / "cnclip_lora"
    for kind, size in (("pixels", 3000), ("embeddings", 500)):
        (root / kind).mkdir(parents=True)
        (root / kind / f"{kind}-x.arrow").write_bytes(b"\0" * size)
    (tmp_path / "other-dataset").mkdir()  # datasets' own caches are not ours to delete

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out
    assert any("pixels" in line and "1 files" in line and "2.9 KB" in line for line in out.splitlines()), out
    assert any("embeddings" in line and "500 B" in line for line in out.splitlines()), out

    assert main(["cache", "--clear", "embeddings"]) == 0
    assert "freed 500 B" in capsys.readouterr().out
    assert not (root / "embeddings").exists() and (root / "pixels" / "pixels-x.arrow").exists()
    assert main(["cache", "--clear"]) == 0
    assert not (root / "pixels").exists() and (tmp_path / "other-dataset").is_dir()
    with pytest.raises(SystemExit) as exit_:  # argparse: not a cache kind
        main(["cache", "--clear", "models"])
    assert exit_.value.code == 2 and "invalid choice: 'models'" in capsys.readouterr().err


def test_every_option_of_every_command_has_help():
    from cnclip_lora.commands import COMMANDS

    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in COMMANDS.items()
        for action in command.parser()._actions
        if not action.help or action.help == "==SUPPRESS=="
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    "command, foreign",
    [
        ("retrieve", ["--split", "val"]),
        ("retrieve", ["--allow_different_split"]),
        ("retrieve", ["--val_size", "0.2"]),
        ("evaluate", ["--output", "x.csv"]),
        ("evaluate", ["--assign", "hungarian"]),
        ("evaluate", ["--top_k", "5"]),
    ],
)
def test_retrieve_and_evaluate_refuse_each_others_options(command, foreign, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--model_name_or_path", "m", *foreign])
    assert exit_.value.code == 2
    assert foreign[0] in capsys.readouterr().err


def test_retrieve_and_evaluate_help_lists_only_their_options(capsys):
    for command, own, foreign in (
        ("retrieve", "--topk_output", "--allow_different_split"),
        ("evaluate", "--allow_different_split", "--topk_output"),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert own in out and foreign not in out


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cnclip-lora {version('cnclip-lora')}"
