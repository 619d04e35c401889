"""The real cause, first and once: mistyped paths, an offline Hub, a misnamed image folder, line breaks."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from fake_hub import fake_hub  # noqa: F401  (fixture)
from test_hub import make_light_run

from cnclip_lora.adapter.hub import resolve_adapter
from cnclip_lora.commands import main
from cnclip_lora.data import check_data, load_competition_data
from cnclip_lora.errors import CnClipLoraError, ConfigError, DataError
from cnclip_lora.utils.sources import check_source


def _dead_port() -> int:
    """A local port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """The Hub endpoint refuses connections (as offline), with an empty private cache."""
    from huggingface_hub import constants

    url = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return url


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_model_path_typo_names_the_nearest_folder_in_one_line(
    tmp_path, tiny_model_dir, demo_dir, capsys, monkeypatch, no_hub
):
    work = tmp_path / "demo_output"
    shutil.copytree(tiny_model_dir, work / "tiny-model")
    monkeypatch.chdir(tmp_path)
    for typo, guess in (
        ("demo_output/tiny-modle", "demo_output/tiny-model"),
        (str(work / "tiny-modle"), str(work / "tiny-model")),
    ):
        code = main(["evaluate", "--model_name_or_path", typo, "--data_dir", str(demo_dir)])
        lines = _stderr_lines(capsys)
        assert code == 2
        assert len(lines) == 1, lines
        assert "folder not found" in lines[0] and f"did you mean {guess!r}" in lines[0]
        assert "huggingface" not in lines[0].lower() and "connect" not in lines[0].lower()


def test_adapter_path_typo_is_folder_not_found_not_a_hub_error(tmp_path, tiny_model_dir, demo_dir, capsys, no_hub):
    run = make_light_run(tmp_path / "runs" / "adapter")
    assert resolve_adapter(str(run)) == run
    with pytest.raises(ConfigError, match=r"adapter folder not found; did you mean '.*runs/adapter'"):
        resolve_adapter(str(tmp_path / "runs" / "adaptr"))
    code = main(
        [
            "retrieve",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--adapter",
            str(tmp_path / "runs" / "adaptr"),
            "--data_dir",
            str(demo_dir),
            "--output",
            str(tmp_path / "submit.csv"),
        ]
    )
    lines = _stderr_lines(capsys)
    assert code == 2 and len(lines) == 1 and "--adapter" in lines[0] and "cache" not in lines[0]
    assert not (tmp_path / "submit.csv").exists()


def test_relative_path_without_close_match_lists_the_folder(tmp_path, monkeypatch, no_hub):
    (tmp_path / "models" / "alpha").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model folder not found \('models' holds: alpha\)"):
        check_source("models/zzzzzzzz", option="--model_name_or_path")


def test_hub_id_offline_and_not_cached_is_one_line(tmp_path, demo_dir, capsys, no_hub):
    code = main(
        ["evaluate", "--model_name_or_path", "OFA-Sys/chinese-clip-vit-base-patch16", "--data_dir", str(demo_dir)]
    )
    lines = _stderr_lines(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "not in the local cache" in lines[0] and "cannot be reached" in lines[0]
    with pytest.raises(CnClipLoraError, match=r"'user/never-downloaded'.*not in the local cache.*unreachable"):
        resolve_adapter("user/never-downloaded")


def test_hub_adapter_cached_is_served_when_the_hub_is_unreachable(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import constants

    from cnclip_lora.adapter.hub import push_adapter

    run = make_light_run(tmp_path / "run")
    push_adapter(run, "user/cached")
    path = resolve_adapter("user/cached")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_dead_port()}")  # no HF_HUB_OFFLINE set
    assert resolve_adapter("user/cached") == path


def _misnamed(make_dataset_dir, tmp_path) -> Path:
    root = make_dataset_dir(tmp_path, n_train_images=30, n_gallery=10, n_queries=5)
    (root / "image").rename(root / "images")
    return root


def test_misnamed_image_folder_is_one_problem_with_did_you_mean(tmp_path, make_dataset_dir):
    root = _misnamed(make_dataset_dir, tmp_path)
    for skip in (False, True):
        report = check_data(root, skip_bad_rows=skip)
        assert not report.ok
        assert len(report.problems) == 1, [str(p) for p in report.problems]
        assert "did you mean images/?" in report.problems[0].message
        assert "--skip_bad_rows" not in report.summary()
    (root / "images").rename(root / "Image")
    assert "did you mean Image/?" in check_data(root).problems[0].message
    (root / "Image").rename(root / "pictures")
    assert [p.message.startswith("image folder not found") for p in check_data(root).problems] == [True]


def test_cli_prints_a_data_error_once(tmp_path, make_dataset_dir, tiny_model_dir, capsys):
    root = _misnamed(make_dataset_dir, tmp_path)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(root)]
    assert main(["train", *argv, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 2 and "did you mean images/?" in lines[1], lines
    assert main(["retrieve", *argv, "--output", str(tmp_path / "s.csv")]) == 2
    assert len(_stderr_lines(capsys)) == 2

    (root / "images").rename(root / "image")
    (root / "image" / "train_003.jpg").unlink()
    assert main(["train", *argv, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("train_003.jpg") == 1, err


def test_quoted_line_break_in_a_title_says_to_remove_it(tmp_path, make_dataset_dir):
    root = make_dataset_dir(tmp_path)
    (root / "train.csv").write_text(
        'title\tpath\n"好看的\n连衣裙"\ttrain_000.jpg\n好\ttrain_001.jpg\n', encoding="utf-8"
    )
    with pytest.raises(
        DataError, match=r"line 2: a quoted field holds a line break \(lines 2-3\).*replace the line break"
    ) as err:
        load_competition_data(root)
    assert "unmatched" not in str(err.value)
    (root / "test_query.csv").write_text('title\n"查询\n一"\n查询二\n查询三\n', encoding="utf-8")
    assert any(
        "test_query.csv, line 2: a quoted field holds a line break" in str(p) for p in check_data(root).problems
    )


# ------------------------------------------------ options: one line, the owner verb, the closest name


def _refusal(argv: list[str], capsys) -> str:
    """stderr of a command that must be refused with exit status 2 (argparse's or the package's)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "owner"),
    [
        (["retrieve", "--model_name_or_path", "m", "--num_train_epochs", "3"], "train"),
        (["evaluate", "--model_name_or_path", "m", "--topk_output", "t.csv"], "retrieve"),
        (["train", "--model_name_or_path", "m", "--output_dir", "o", "--top_k", "5"], "retrieve"),
        (["serve", "--model_name_or_path", "m", "--split", "val"], "evaluate"),
    ],
)
def test_an_option_of_another_verb_names_that_verb(argv, owner, capsys):
    err = _refusal(argv, capsys)
    flag = next(a for a in argv[3:] if a.startswith("--") and a not in ("--model_name_or_path", "--output_dir"))
    line = next(line for line in err.splitlines() if "unrecognized arguments" in line)
    assert flag in line and f"cnclip-lora {owner}" in line and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (["retrieve", "--model_name_or_path", "m", "--top_kk", "3"], "--top_k"),
        (["train", "--model_name_or_path", "m", "--output_dir", "o", "--max_step", "3"], "--max_steps"),
        (["report", "--model_name_or_path", "m", "--thumb_sise", "90"], "--thumb_size"),
    ],
)
def test_a_misspelt_option_gets_the_closest_name(argv, meant, capsys):
    err = _refusal(argv, capsys)
    assert f"did you mean {meant}" in err and "Traceback" not in err


def test_a_misspelt_python_keyword_gets_the_closest_name(tmp_path):
    from cnclip_lora import train

    with pytest.raises(ConfigError, match=r"unknown option 'max_step'; did you mean max_steps\?"):
        train(model_name_or_path="m", output_dir=str(tmp_path), max_step=20)


def test_a_retrieval_dataclass_refuses_another_verbs_field():
    from cnclip_lora import RetrieveArguments

    with pytest.raises(TypeError, match="split"):
        RetrieveArguments(model_name_or_path="m", split="test")


@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_half_precision_without_a_gpu_is_one_line_before_loading(flag, tmp_path, capsys):
    """The model path does not exist: the refusal comes before anything is loaded."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: half precision is allowed")
    err = _refusal(["train", "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), flag,
                    "true"], capsys)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "GPU" in lines[0], err
