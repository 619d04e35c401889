"""``cnclip-lora demo``: the whole job on the embedded default, end to end, in a short budget."""

from __future__ import annotations

import csv
from pathlib import Path

from cnclip_lora.commands import main

XFDATA = Path(__file__).resolve().parents[2] / "xfdata"


def test_demo_runs_end_to_end_and_learns(tmp_path, capsys):
    work, submit = tmp_path / "work", tmp_path / "out" / "submit.csv"
    # A fraction of the demo's budget: enough to move well clear of the untrained model.
    code = main(
        [
            "demo",
            "--data_dir",
            str(XFDATA),
            "--workdir",
            str(work),
            "--output",
            str(submit),
            "--num_train_epochs",
            "10",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out

    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("held-out (val)", "test queries"):
            rows[cells[0]] = (float(cells[2]), float(cells[3]))  # base MR, fine-tuned MR
    assert set(rows) == {"held-out (val)", "test queries"}, out
    readme = (XFDATA.parent / "README.md").read_text(encoding="utf-8")
    assert "| split | gallery | base MR | fine-tuned MR | base R@10 | fine-tuned R@10 |" in out
    assert "| split | gallery | base MR | fine-tuned MR | base R@10 | fine-tuned R@10 |" in readme
    for split, (base, tuned) in rows.items():
        assert tuned > base + 5, f"{split}: MR {base} -> {tuned} after 10 epochs"

    with open(submit, encoding="utf-8") as f:
        submission = list(csv.reader(f, delimiter="\t"))
    with open(XFDATA / "test_query.csv", encoding="utf-8") as f:
        queries = list(csv.reader(f, delimiter="\t"))
    assert len(submission) == len(queries)
    assert (submit.parent / "topk.csv").is_file()
    assert (work / "report.html").stat().st_size > 0
    assert (work / "adapter" / "adapter_model.safetensors").is_file()
