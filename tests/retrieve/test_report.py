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
from cnclip_lora.retrieve.report import ModelRun, ReportArguments, SplitView, render_report, training_curves_png


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


def _view(
    tmp_path, runs, titles=("<script>alert(1)</script>连衣裙", "长袖T恤 & 衬衫", "牛仔裤"), name="val", known=None
):
    names = _images(tmp_path, 4)
    return SplitView(name, list(titles), list(range(len(titles))), names, tmp_path, runs, known or {})


def _thumbnail_table(page: str) -> list[str]:
    return json.loads(re.search(r'<script type="application/json" id="thumbs">(.*?)</script>', page, re.S).group(1))


def test_render_marks_true_images_sorts_worst_first_and_splits_fixed_from_broken(tmp_path):
    tuned = _run("tuned", [1, 3, 2], [[0, 1], [2, 3], [3, 2]])  # q0 fixed; q1 broken
    base = _run("base", [4, 1, 2], [[3, 2], [1, 0], [3, 2]])
    known = {"img3.jpg": ["</script><b>训练标题</b>"]}
    page = render_report([_view(tmp_path, [tuned, base], known=known)], thumb_size=32)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;连衣裙" in page
    assert "长袖T恤 &amp; 衬衫" in page
    # what the data knows about a candidate is shown under it, escaped
    assert "&lt;/script&gt;&lt;b&gt;训练标题" in page and "<b>训练标题" not in page
    # worst-first comes first; fixed and broken follow, collapsed
    worst = page.split('id="val-worst"')[1].split('id="val-fixed"')[0]
    fixed = page.split('id="val-fixed"')[1].split('id="val-broken"')[0]
    broken = page.split('id="val-broken"')[1]
    assert re.findall(r'data-query="(\d+)"', fixed) == ["0"]
    assert re.findall(r'data-query="(\d+)"', broken) == ["1"]
    assert re.findall(r'data-query="(\d+)"', worst) == ["1", "2", "0"]  # ranks 3, 2, 1 under tuned
    summary = page.split('id="summary"')[1].split('id="val-metrics"')[0]
    assert all(f'href="#{a}"' in summary for a in ("val-metrics", "val-worst", "val-fixed", "val-broken", "training"))
    assert "1 fixed and 1 broken" in summary
    assert re.findall(r'href="#val-q(\d+)"', summary) == ["1", "2", "0"]  # the worst queries, linked
    assert all(f'id="val-q{q}"' in worst for q in range(3)) and 'id="val-q' not in fixed + broken  # one anchor each
    assert page.index('id="val-worst"') < page.index('id="val-fixed"') < page.index('id="val-broken"')
    assert page.count("<details>") == 2  # fixed and broken are collapsed sections
    # True image marked wherever it is among the candidates: q0 under tuned, q1 under base, q2 under both.
    assert worst.count('class="true"') == 4
    assert "http" not in page.replace("http-equiv", "")  # no external assets
    # Each image's thumbnail is stored once, however often it is shown; every reference resolves.
    table = _thumbnail_table(page)
    refs = [int(r) for r in re.findall(r'data-t="(\d+)"', page)]
    assert len(refs) > len(table) == len(set(table)) == 4
    assert set(refs) == set(range(len(table)))
    assert all(base64.b64decode(t.split(",", 1)[1])[:2] == b"\xff\xd8" for t in table)


def test_render_pages_long_lists_and_shows_each_split(tmp_path):
    """500 queries: the worst-first list is in pages of page_size; val and test each get a section."""
    q = 500
    ranks = list(range(1, q + 1))
    tuned = _run("tuned", ranks, [[0, 1]] * q)
    titles = [f"标题{i}" for i in range(q)]
    names = _images(tmp_path, 4)
    views = [
        SplitView("val", titles, [i % 4 for i in range(q)], names, tmp_path, [tuned]),
        SplitView("test", titles[:30], [0] * 30, names, tmp_path, [_run("tuned", ranks[:30], [[2, 3]] * 30)]),
    ]
    page = render_report(views, page_size=25, thumb_size=16)
    val = page.split('<section id="val">')[1].split("</section>")[0]
    pages = re.findall(r'<div class="page" data-page="(\d+)"( hidden)?>', val)
    assert len(pages) == 20 and pages[0][1] == "" and all(h == " hidden" for _, h in pages[1:])
    assert "page 1 of 20" in val
    first = val.split('data-page="1"')[0]
    assert len(re.findall(r'data-query="\d+"', first)) == 25  # one page holds page_size queries
    test = page.split('<section id="test">')[1].split("</section>")[0]
    assert len(re.findall(r'data-query="\d+"', test)) == 30 and 'class="pager"' in test
    summary = page.split('id="summary"')[1].split("<section")[0]
    assert "<b>val</b>: 500 queries" in summary and "<b>test</b>: 30 queries" in summary


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
        (dict(split="both"), "--split must be one of all, val, test"),
        (dict(page_size=0), "--page_size must be >= 1"),
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


def test_report_shows_the_test_split_only_when_it_has_answers(tmp_path):
    (tmp_path / "d").mkdir()
    args = ReportArguments(model_name_or_path="m", data_dir=str(tmp_path / "d"))
    assert args.report_splits() == ["val"]
    (tmp_path / "d" / "test_answers.csv").write_text("query,path\n")
    assert args.report_splits() == ["val", "test"]
    assert ReportArguments(model_name_or_path="m", data_dir=str(tmp_path / "d"), split="val").report_splits() == [
        "val"
    ]
    given = ReportArguments(model_name_or_path="m", data_dir=str(tmp_path), answers="a.csv")
    assert given.report_splits() == ["val", "test"]


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
    assert 'id="curves"' in page and 'id="val-fixed"' in page and 'id="val-broken"' in page
    worst = page.split('id="val-worst"')[1].split("<details>")[0]
    assert len(re.findall(r'data-query="\d+"', worst)) == ref["val_queries"]
    # The demo data has test answers: the test split is on the page too, scored as `evaluate --split test`.
    test = evaluate_retrieval(
        EvaluateArguments(
            model_name_or_path=str(tiny_model_dir), data_dir=str(demo_dir), adapter=str(adapter), split="test"
        )
    )
    section = page.split('<section id="test">')[1]
    row = re.search(r"<tr><th>tuned</th>(.*?)</tr>", section).group(1)
    cells = [float(c) for c in re.findall(r"<td>([\d.]+)</td>", row)]
    assert cells[3] == pytest.approx(round(test["test_t2i_MR"], 1), abs=0.051)
    assert cells[8:] == [test["test_gallery_size"], test["test_queries"]]


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
