"""The HTML report: ranks, fixed/broken sets, escaping, metrics equal to `evaluate`, curves."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from serve_utils import make_random_adapter

from cnclip_lora.commands import main
from cnclip_lora.errors import ConfigError
from cnclip_lora.inference.metrics import true_ranks
from cnclip_lora.retrieve.report import ModelRun, ReportArguments, render_report, training_curves_png


def test_true_ranks_match_a_full_sort():
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    labels = rng.integers(0, 50, size=30)
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    expected = [int(np.where(order[q] == labels[q])[0][0]) + 1 for q in range(30)]
    assert true_ranks(queries, gallery, labels, block=7).tolist() == expected


def _images(tmp_path: Path, n: int) -> list[str]:
    from PIL import Image

    names = [f"img{i}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 40), (40 * i % 256, 90, 150)).save(tmp_path / name)
    return names


def _run(name: str, ranks: list[int], top: list[list[int]]) -> ModelRun:
    metrics = {f"{d}_{m}": 50.0 for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10", "MR")}
    metrics.update(gallery_size=4, queries=len(ranks))
    top_arr = np.asarray(top)
    return ModelRun(
        name, metrics, np.asarray(ranks), np.linspace(0.9, 0.1, top_arr.size).reshape(top_arr.shape), top_arr
    )


def test_render_marks_true_images_sorts_worst_first_and_splits_fixed_from_broken(tmp_path):
    names = _images(tmp_path, 4)
    titles = ["<script>alert(1)</script>连衣裙", "长袖T恤 & 衬衫", "牛仔裤"]
    labels = [0, 1, 2]
    tuned = _run("tuned", [1, 3, 2], [[0, 1], [2, 3], [3, 2]])  # q0 fixed; q1 broken
    base = _run("base", [4, 1, 2], [[3, 2], [1, 0], [3, 2]])
    page = render_report(
        titles=titles, labels=labels, names=names, image_dir=tmp_path, runs=[tuned, base], split="val", thumb_size=32
    )
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;连衣裙" in page
    assert "长袖T恤 &amp; 衬衫" in page
    # worst-first comes first; fixed and broken follow, collapsed
    worst = page.split('id="worst"')[1].split('id="fixed"')[0]
    fixed = page.split('id="fixed"')[1].split('id="broken"')[0]
    broken = page.split('id="broken"')[1]
    assert re.findall(r'data-query="(\d+)"', fixed) == ["0"]
    assert re.findall(r'data-query="(\d+)"', broken) == ["1"]
    assert re.findall(r'data-query="(\d+)"', worst) == ["1", "2", "0"]  # ranks 3, 2, 1 under tuned
    summary = page.split('id="summary"')[1].split('id="metrics"')[0]
    assert all(f'href="#{a}"' in summary for a in ("metrics", "worst", "fixed", "broken", "training"))
    assert "1 fixed and 1 broken" in summary
    assert re.findall(r'href="#q(\d+)"', summary) == ["1", "2", "0"]  # the worst queries, linked
    assert all(f'id="q{q}"' in worst for q in range(3)) and 'id="q' not in fixed + broken  # one anchor each
    assert page.index('id="worst"') < page.index('id="fixed"') < page.index('id="broken"')
    assert page.count("<details>") == 2  # fixed and broken are collapsed sections
    # True image marked wherever it is among the candidates: q0 under tuned, q1 under base, q2 under both.
    assert worst.count('class="true"') == 4
    assert "http" not in page.replace("http-equiv", "")  # no external assets
    srcs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert srcs and all(base64.b64decode(s)[:2] == b"\xff\xd8" for s in srcs)


def test_training_curves_png_reads_loss_acc_and_eval_mr(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install 'cnclip-lora[report]'")
    state = tmp_path / "trainer_state.json"
    state.write_text(
        json.dumps({"log_history": [{"step": 1, "loss": 2.0, "t2i_acc": 0.1}, {"step": 2, "eval_t2i_MR": 30.0}]})
    )
    png = training_curves_png(state)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    state.write_text(json.dumps({"log_history": [{"step": 1, "learning_rate": 0.1}]}))
    assert training_curves_png(state) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(compare_base=True), "--compare_base needs --adapter"),
        (dict(adapter="a", compare_base=True, baseline_adapter="b"), "either --compare_base or --baseline_adapter"),
        (dict(top_k=0), "--top_k must be >= 1"),
        (dict(output="report.txt"), "must be an .html file"),
        (dict(backend="onnx", baseline_adapter="b"), "need the torch backend"),
    ],
)
def test_report_arguments_reject_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ReportArguments(model_name_or_path="m", **kwargs)


def test_report_arguments_take_the_model_options_and_the_recorded_split_by_default():
    args = ReportArguments(
        model_name_or_path="m",
        adapter="a",
        model_revision="r1",
        adapter_revision="r2",
        allow_different_base=True,
        backend="torch",
    )
    assert (args.model_revision, args.adapter_revision, args.allow_different_base) == ("r1", "r2", True)
    assert args.val_size is None and args.split_seed is None  # None = the adapter's recorded split


def test_report_cli_metrics_equal_evaluate(tiny_model_dir, demo_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install 'cnclip-lora[report]'")
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    adapter = make_random_adapter(tiny_model_dir, tmp_path / "adapter")
    out = tmp_path / "r" / "report.html"
    common = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--data_dir",
        str(demo_dir),
        "--device",
        "cpu",
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    assert main(["report", *common, "--adapter", str(adapter), "--compare_base", "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for name, adapter_arg in (("tuned", str(adapter)), ("base", None)):
        ref = evaluate_retrieval(
            EvaluateArguments(
                model_name_or_path=str(tiny_model_dir),
                data_dir=str(demo_dir),
                adapter=adapter_arg,
                device="cpu",
                cache_dir="",
            )
        )
        row = re.search(rf"<tr><th>{name}</th>(.*?)</tr>", page).group(1)
        cells = [float(c) for c in re.findall(r"<td>([\d.]+)</td>", row)]
        expected = [ref[f"val_{d}_{m}"] for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10", "MR")]
        assert cells[:8] == pytest.approx([round(v, 1) for v in expected], abs=0.051)
        assert cells[8:] == [ref["val_gallery_size"], ref["val_queries"]]
    assert 'id="curves"' in page and 'id="fixed"' in page and 'id="broken"' in page
    worst = page.split('id="worst"')[1].split("<details>")[0]
    assert len(re.findall(r'data-query="\d+"', worst)) == ref["val_queries"]


def test_report_cli_bad_training_dir_is_one_line_error(tiny_model_dir, demo_dir, tmp_path, capsys):
    code = main(
        [
            "report",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--data_dir",
            str(demo_dir),
            "--training_dir",
            str(tmp_path),
            "--output",
            str(tmp_path / "r.html"),
        ]
    )
    assert code == 2
    assert "no trainer_state.json" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
