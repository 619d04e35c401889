"""``cnclip-lora report``: one self-contained HTML page to look at retrieval results.

For a labelled split (the held-out split, or test queries with an answers file) and one or two
models, the page holds the metrics table, every query's top-k thumbnails with scores (true image
marked, its rank under each model; worst first), the queries a second model fixed or broke, and
the training curves from ``trainer_state.json``. Thumbnails and plots are embedded (base64), so
the file opens offline from anywhere.

    cnclip-lora report --model_name_or_path M --adapter out/ --compare_base --output report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.retrieve.arguments import ReportArguments
from cnclip_lora.utils.files import atomic_path

if TYPE_CHECKING:
    from cnclip_lora.retrieve.run import LabelledSplit

__all__ = ["ReportArguments", "ModelRun", "build_report", "render_report", "training_curves_png"]

logger = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """One model's results on the labelled split."""

    name: str
    metrics: dict[str, float]
    ranks: np.ndarray  # [Q] 1-based rank of each query's true image in the whole gallery
    top_scores: np.ndarray  # [Q, k]
    top_indices: np.ndarray  # [Q, k]


def _run_model(args: ReportArguments, adapter: str | None, name: str, split: LabelledSplit) -> ModelRun:
    from cnclip_lora.inference.search import rank
    from cnclip_lora.retrieve.run import open_model

    model = open_model(args, adapter=adapter)
    # The evaluator `cnclip-lora evaluate` and the Trainer score with; bare metric names for the table.
    evaluator = split.evaluator(name="", batch_size=args.batch_size)
    queries, gallery = evaluator.embed(model)
    del model
    metrics = evaluator.score(queries, gallery)
    scores, indices = rank(queries, gallery, k=min(args.top_k, len(split.names)))
    return ModelRun(name, metrics, evaluator.true_ranks(queries, gallery), scores, indices)


# ------------------------------------------------------------------------------------ rendering


def _thumbnail(path: str, size: int, memo: dict[str, str]) -> str:
    """``data:`` URI of a JPEG thumbnail (memoised: an image shown twice is encoded once)."""
    if path not in memo:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((2 * size, 2 * size))  # shown at `size`; twice that when enlarged
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
            memo[path] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        except OSError as err:
            logger.warning("report: cannot read %s (%s); shown as a blank tile", path, err)
            memo[path] = ""
    return memo[path]


def training_curves_png(state_file: str | os.PathLike) -> bytes | None:
    """PNG of loss, ``t2i_acc`` and eval MR against step from ``trainer_state.json``; ``None``
    when the file has none of them. Needs matplotlib (``pip install 'cnclip-lora[report]'``)."""
    history = json.loads(Path(state_file).read_text(encoding="utf-8")).get("log_history", [])
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            wanted = key in ("loss", "t2i_acc", "eval_loss") or (key.startswith("eval_") and key.endswith("MR"))
            if wanted and isinstance(value, (int, float)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(value))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        [k for k in series if "loss" in k],
        [k for k in series if k == "t2i_acc"],
        [k for k in series if k.endswith("MR")],
    ]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.0), dpi=90, squeeze=False)
    for ax, keys in zip(axes[0], groups):
        for key in keys:
            xs, ys = series[key]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(", ".join(keys), fontsize=10)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.5em;color:#222}
table.metrics{border-collapse:collapse;margin-bottom:1em}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:3px 8px;text-align:right}
.query{border-top:1px solid #ddd;padding:8px 0}
.title{font-weight:600}
.ranks span{margin-right:1em}
.row{display:flex;gap:6px;align-items:flex-start;margin:4px 0}
.row .label{width:7em;font-size:12px;color:#555}
figure{margin:0;text-align:center;font-size:11px}
figure img{display:block;border:3px solid transparent}
figure.true img{border-color:#1a9c3a}
figure.true figcaption{color:#1a9c3a;font-weight:600}
.truth img{border:3px dashed #1a9c3a}
.good{color:#1a9c3a}.bad{color:#c0392b}
img.thumb{cursor:zoom-in}
details summary h2{display:inline}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.7);display:flex;align-items:center;justify-content:center}
#zoom[hidden]{display:none}
#zoom img{min-width:240px;image-rendering:auto;background:#fff;cursor:zoom-out}
"""


def _metrics_table(runs: Sequence[ModelRun]) -> str:
    cols = [
        ("t2i", "R@1"),
        ("t2i", "R@5"),
        ("t2i", "R@10"),
        ("t2i", "MR"),
        ("i2t", "R@1"),
        ("i2t", "R@5"),
        ("i2t", "R@10"),
        ("i2t", "MR"),
    ]
    head = "".join(f"<th>{d} {m}</th>" for d, m in cols)
    rows = []
    for run in runs:
        cells = "".join(f"<td>{run.metrics[f'{d}_{m}']:.1f}</td>" for d, m in cols)
        rows.append(
            f"<tr><th>{html.escape(run.name)}</th>{cells}<td>{int(run.metrics['gallery_size'])}</td>"
            f"<td>{int(run.metrics['queries'])}</td></tr>"
        )
    return (
        f'<table class="metrics" id="metrics"><tr><th>model</th>{head}<th>gallery</th><th>queries</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _query_block(
    q: int,
    title: str,
    label: int,
    runs: Sequence[ModelRun],
    names: Sequence[str],
    paths: Sequence[str],
    size: int,
    memo: dict[str, str],
    anchor: bool = True,
) -> str:
    ident = f' id="q{q}"' if anchor else ""  # the summary links to the block in the worst-first list
    ranks = "".join(
        f'<span class="rank" data-model="{html.escape(r.name)}">rank under {html.escape(r.name)}: '
        f"<b>{int(r.ranks[q])}</b></span>"
        for r in runs
    )
    truth = (
        f'<figure class="truth"><img class="thumb" src="{_thumbnail(paths[label], size, memo)}" '
        f'width="{size}" alt="true image"><figcaption>true image</figcaption></figure>'
    )
    rows = []
    for run in runs:
        figs = []
        for score, idx in zip(run.top_scores[q], run.top_indices[q]):
            if idx < 0:
                continue
            cls = "true" if idx == label else "cand"
            mark = "&#10003; " if idx == label else ""
            figs.append(
                f'<figure class="{cls}"><img class="thumb" src="{_thumbnail(paths[idx], size, memo)}" '
                f'width="{size}" alt="{html.escape(names[idx])}" title="{html.escape(names[idx])}">'
                f"<figcaption>{mark}{score:.3f}</figcaption></figure>"
            )
        rows.append(
            f'<div class="row"><div class="label">{html.escape(run.name)} top-{len(figs)}</div>{"".join(figs)}</div>'
        )
    return (
        f'<div class="query"{ident} data-query="{q}"><div class="title">{html.escape(title)}</div>'
        f'<div class="ranks">{ranks}</div><div class="row"><div class="label"></div>{truth}</div>{"".join(rows)}</div>'
    )


def render_report(
    *,
    titles: Sequence[str],
    labels: Sequence[int],
    names: Sequence[str],
    image_dir: str | os.PathLike,
    runs: Sequence[ModelRun],
    split: str,
    max_queries: int = 100,
    thumb_size: int = 96,
    curves_png: bytes | None = None,
    curves_note: str = "",
) -> str:
    """The report page as one HTML string. ``runs[0]`` is the model inspected; ``runs[1]``, if
    any, the baseline it is compared with (fixed = top-1 now, not under the baseline)."""
    paths = [str(Path(image_dir) / n) for n in names]
    memo: dict[str, str] = {}
    main = runs[0]
    order = sorted(range(len(titles)), key=lambda q: (-int(main.ranks[q]), q))[:max_queries]
    fixed: list[int] = []
    broken: list[int] = []
    if len(runs) > 1:
        base = runs[1]
        fixed = [q for q in range(len(titles)) if main.ranks[q] == 1 and base.ranks[q] > 1]
        broken = [q for q in range(len(titles)) if main.ranks[q] > 1 and base.ranks[q] == 1]
    parts = [
        f"<!DOCTYPE html><html lang='zh'><head><meta charset='utf-8'><title>cnclip-lora report</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Retrieval report: {html.escape(split)} split</h1>",
        _summary(titles, main, order, fixed, broken, len(names), has_baseline=len(runs) > 1),
        "<h2>Metrics</h2>",
        _metrics_table(runs),
        f'<h2 id="worst">All queries, worst-ranked under {html.escape(main.name)} first '
        f"(showing {len(order)} of {len(titles)})</h2>",
    ]
    parts.extend(_query_block(q, titles[q], labels[q], runs, names, paths, thumb_size, memo) for q in order)
    if len(runs) > 1:
        for kind, qs, cls in (("fixed", fixed, "good"), ("broken", broken, "bad")):
            qs = sorted(qs, key=lambda q: (-abs(int(main.ranks[q]) - int(base.ranks[q])), q))
            what = (
                f"top-1 under {main.name}, not under {base.name}"
                if kind == "fixed"
                else f"top-1 under {base.name}, not under {main.name}"
            )
            shown = qs[:max_queries]
            more = f", showing {len(shown)}" if len(qs) > len(shown) else ""
            # Collapsed: the page stays short; the summary's counts say whether to open them.
            parts.append(
                f'<details><summary><h2 class="{cls}" id="{kind}">{kind.capitalize()} by {html.escape(main.name)} '
                f"({html.escape(what)}): {len(qs)}{more}</h2></summary>"
            )
            parts.extend(
                _query_block(q, titles[q], labels[q], runs, names, paths, thumb_size, memo, anchor=False)
                for q in shown
            )
            parts.append("</details>")
    parts.append('<h2 id="training">Training curves</h2>')
    if curves_png:
        parts.append(
            f'<img id="curves" alt="training curves" src="data:image/png;base64,'
            f'{base64.b64encode(curves_png).decode("ascii")}">'
        )
    else:
        parts.append(f"<p id='no-curves'>{html.escape(curves_note or 'no training curves')}</p>")
    parts.append(_ENLARGE)
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(
    titles: Sequence[str],
    main: ModelRun,
    order: Sequence[int],
    fixed: Sequence[int],
    broken: Sequence[int],
    gallery: int,
    *,
    has_baseline: bool,
) -> str:
    """The top of the page: what it holds, links to each section, the worst queries and the counts."""
    links = ['<a href="#metrics">metrics</a>', '<a href="#worst">queries, worst first</a>']
    if has_baseline:
        links += [f'<a href="#fixed">fixed ({len(fixed)})</a>', f'<a href="#broken">broken ({len(broken)})</a>']
    links.append('<a href="#training">training curves</a>')
    top1 = sum(1 for q in range(len(titles)) if main.ranks[q] == 1)
    worst = "".join(
        f'<li><a href="#q{q}">{html.escape(titles[q][:60])}</a>: rank {int(main.ranks[q])}</li>' for q in order[:5]
    )
    counts = f"; {len(fixed)} fixed and {len(broken)} broken against the baseline" if has_baseline else ""
    return (
        f'<nav id="summary"><p>{len(titles)} queries against a gallery of {gallery} images: {top1} with the true '
        f"image first under {html.escape(main.name)}{counts}. Ranks are 1-based over the whole gallery (a tie counts "
        f"against the true image); the true image has a green frame; click a thumbnail to enlarge it.</p>"
        f"<p>{' · '.join(links)}</p><p>Worst queries:</p><ol>{worst}</ol></nav>"
    )


#: Click a thumbnail: it is shown at its stored size (twice the thumbnail's) over the page; click again to close.
_ENLARGE = """<div id="zoom" hidden></div><script>
const zoom = document.getElementById('zoom');
document.addEventListener('click', (ev) => {
  if (ev.target.classList && ev.target.classList.contains('thumb')) {
    const big = document.createElement('img'); big.src = ev.target.src; big.alt = ev.target.alt;
    zoom.replaceChildren(big); zoom.hidden = false;
  } else if (zoom.contains(ev.target)) { zoom.hidden = true; }
});
</script>"""


def _curves(args: ReportArguments) -> tuple[bytes | None, str]:
    folder = args.training_dir or args.adapter
    if not folder or not Path(folder).is_dir():
        return None, "No training folder given (--training_dir): no curves."
    state = Path(folder) / "trainer_state.json"
    if not state.is_file():
        return None, f"{state} not found: no curves."
    try:
        png = training_curves_png(state)
    except ImportError:
        return None, "matplotlib is not installed (pip install 'cnclip-lora[report]'): no curves."
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CnClipLoraError(f"{state}: not readable JSON ({err}).") from None
    return png, "" if png else f"{state} logs no loss, t2i_acc or eval MR: no curves."


def build_report(args: ReportArguments) -> Path:
    """Score the labelled split with each model and write the HTML report (atomically)."""
    from cnclip_lora.inference.model import check_device
    from cnclip_lora.retrieve.run import scored_split

    check_device(args.device)
    args.check_sources()
    if args.training_dir and not (Path(args.training_dir) / "trainer_state.json").is_file():
        raise ConfigError(f"--training_dir {args.training_dir}: no trainer_state.json there.")
    split = scored_split(args, args.adapter, args.adapter_revision)
    if args.baseline_adapter and args.split == "val":
        scored_split(args, args.baseline_adapter)  # the baseline must have been validated on the same images
    main_name = "tuned" if args.adapter else "base"
    runs = [_run_model(args, args.adapter, main_name, split)]
    if args.compare_base:
        runs.append(_run_model(args, None, "base", split))
    elif args.baseline_adapter:
        runs.append(_run_model(args, args.baseline_adapter, "baseline", split))
    curves, note = _curves(args)
    page = render_report(
        titles=split.titles,
        labels=split.labels,
        names=split.names,
        image_dir=split.image_dir,
        runs=runs,
        split=args.split,
        max_queries=args.max_queries,
        thumb_size=args.thumb_size,
        curves_png=curves,
        curves_note=note,
    )
    with atomic_path(args.output) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Path(args.output)
