"""The README cannot drift from the CLI: every command and flag its shell blocks use exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from cnclip_lora.commands import COMMANDS, main

README = Path(__file__).resolve().parents[1] / "README.md"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def cli_calls(block: str) -> list[list[str]]:
    """Each ``cnclip-lora VERB ...`` call of a shell block, continuation lines joined, comments dropped."""
    calls = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].split(" # ")[0].strip()
        match = re.search(r"(?:^|\s|/)cnclip-lora(\s.*)?$", line)
        if not match:
            continue
        try:
            words = shlex.split(match.group(1) or "")
        except ValueError:
            words = (match.group(1) or "").split()
        calls.append(words)
    return calls


def _help(verb: str, capsys) -> str:
    try:
        main([verb, "--help"])  # argparse exits; train's HfArgumentParser help returns
    except SystemExit:
        pass
    return capsys.readouterr().out


def test_readme_has_shell_blocks_with_cli_calls():
    calls = [c for b in shell_blocks(README.read_text(encoding="utf-8")) for c in cli_calls(b)]
    assert len(calls) >= 10
    assert {c[0] for c in calls if c} >= {"train", "retrieve", "evaluate", "make-demo-data", "push"}


def test_every_readme_command_and_flag_exists(capsys):
    helps: dict[str, str] = {}
    missing = []
    for block in shell_blocks(README.read_text(encoding="utf-8")):
        for words in cli_calls(block):
            if not words or words[0].startswith("--"):
                assert not words or words[0] in ("--version", "--help"), words
                continue
            verb = words[0]
            assert verb in COMMANDS, f"README uses unknown command {verb!r}"
            if verb not in helps:
                helps[verb] = _help(verb, capsys)
            for word in words[1:]:
                flag = word.split("=", 1)[0].strip("[]")
                if (
                    flag.startswith("--")
                    and flag not in ("--help", "--log_level")
                    and not re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", helps[verb])
                ):
                    missing.append(f"{verb} {flag}")
    assert not missing, missing


def test_version_comes_from_installed_metadata(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnclip-lora {version('cnclip-lora')}"
