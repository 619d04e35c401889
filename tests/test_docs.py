"""The docs cannot drift from the package: every documented call parses with the verb's own parser,
every link resolves, the options table names real options, and the first-hour walk-through runs
as written."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_lora.commands import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
RUN_MARK = "<!-- docs-test: run -->"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def cli_calls(block: str) -> list[list[str]]:
    """Each ``cnclip-lora VERB ...`` or ``-m cnclip_lora VERB ...`` call of a shell block
    (continuation lines joined, comments and ``...`` placeholders dropped)."""
    calls = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].split(" # ")[0].strip()
        match = re.search(r"(?:^|\s|/)(?:cnclip-lora|-m cnclip_lora)(\s.*)?$", line)
        if not match:
            continue
        rest = match.group(1) or ""
        words = [w for w in shlex.split(rest.replace("...", " ")) if w]
        # `[--private]` / `[--revision BRANCH]`: optional parts, written in brackets
        words = [w.strip("[]") for w in words if w.strip("[]")]
        calls.append((words, "..." in rest))
    return calls


def documented_calls() -> list[tuple[str, list[str], bool]]:
    """``(file, words, partial)``: a partial call (``...`` in it) shows some options of a longer one."""
    return [
        (f"{doc.relative_to(ROOT)}", words, partial)
        for doc in DOCS
        for block in shell_blocks(doc.read_text(encoding="utf-8"))
        for words, partial in cli_calls(block)
    ]


def _parse(words: list[str], partial: bool) -> str | None:
    """``None`` when the verb's own parser takes ``words``; else what it said."""
    from cnclip_lora.errors import CnClipLoraError

    verb, argv = words[0], words[1:]
    if verb not in COMMANDS:
        return f"unknown command {verb!r}"
    if partial:  # only its options can be checked
        unknown = [
            w.split("=", 1)[0] for w in argv if w.startswith("--") and w.split("=", 1)[0] not in _option_strings(verb)
        ]
        return f"{verb}: unknown {unknown}" if unknown else None
    if verb == "train":
        from cnclip_lora.commands.train import parse_train_args

        try:
            # A GPU recipe parses here as it would on its GPU (bf16 on the CPU needs --use_cpu).
            parse_train_args([*argv, "--use_cpu", "true"] if "--use_cpu" not in argv else argv)
        except (CnClipLoraError, SystemExit) as err:
            return f"train: {err}"
        return None
    parser = COMMANDS[verb].parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as err:
        return f"{verb}: {err}"
    return f"{verb}: unknown {unknown}" if unknown else None


def test_the_docs_have_calls_of_every_main_verb():
    verbs = {words[0] for _, words, _ in documented_calls() if words and not words[0].startswith("-")}
    assert verbs >= {"train", "retrieve", "evaluate", "report", "serve", "export-onnx", "push", "check-data"}


def test_every_documented_call_parses(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes are named relative to the checkout
    bad = []
    for where, words, partial in documented_calls():
        if not words or words[0] in ("--version", "--help"):
            continue
        problem = _parse(words, partial)
        if problem:
            bad.append(f"{where}: cnclip-lora {' '.join(words)} -> {problem}")
    assert not bad, "\n".join(bad)


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_options_table_names_real_options():
    table = README.read_text(encoding="utf-8").split("## One screen of options", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    bad = []
    for row in rows:
        verbs_cell, _, options_cell = row.strip("|").split("|")[:3]
        verbs = re.findall(r"`([a-z-]+)`", verbs_cell)
        for verb in verbs:
            assert verb in COMMANDS, verb
        flags = re.findall(r"`(--[a-z_]+)`", options_cell)
        for flag in flags:
            owners = [v for v in verbs if flag in _option_strings(v)]
            if not owners:
                bad.append(f"{'/'.join(verbs)} {flag}")
    assert not bad, bad


def _option_strings(verb: str) -> set[str]:
    return {o for action in COMMANDS[verb].parser()._actions for o in action.option_strings}


def test_version_comes_from_installed_metadata(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnclip-lora {version('cnclip-lora')}"


def _run_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(re.escape(RUN_MARK) + r"\n```bash\n(.*?)```", text, flags=re.S)


def test_the_first_hour_runs_as_written(tmp_path):
    """The README's walk-through, run by bash in a copy of the checkout's data and examples: each
    command succeeds, the adapter learns, and every file it names is written."""
    (block,) = _run_blocks()
    shutil.copytree(ROOT / "xfdata", tmp_path / "xfdata")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    assert "nothing was learned" not in log.lower(), log[-3000:]
    for path in ("outputs/tiny/adapter_model.safetensors", "prediction_result/submit.csv", "outputs/tiny/report.html"):
        assert (tmp_path / path).is_file(), path
    # `evaluate` printed the held-out metrics: the fine-tuned model ranks far better than chance.
    mr = float(re.search(r"val_t2i_MR\s+([\d.]+)", proc.stdout).group(1))
    assert mr > 10, proc.stdout[-2000:]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shell_block_is_bash(doc):
    """Every shell block parses as bash (``bash -n``): no stray prose or unbalanced quotes."""
    for block in shell_blocks(doc.read_text(encoding="utf-8")):
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert proc.returncode == 0, (block, proc.stderr)
