"""``cnclip-lora report``: one self-contained HTML page to look at retrieval results.

For each labelled split (the held-out split, and the test queries when an answers file exists)
and one or two models, the page holds a summary, the metrics table, every query's top-k
thumbnails with scores (true image marked, its rank under each model, what the data says about
each candidate; worst first, in pages), the queries a second model fixed or broke, and the
training curves from ``trainer_state.json``. Thumbnails and plots are embedded (base64), so the
file opens offline from anywhere.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnclip_lora.errors import CnClipLoraError, ConfigError, DataError
from cnclip_lora.inference.metrics import positive_list
from cnclip_lora.retrieve.arguments import ReportArguments
from cnclip_lora.utils.files import atomic_path

if TYPE_CHECKING:
    from cnclip_lora.retrieve.run import LabelledSplit

__all__ = ["ReportArguments", "ModelRun", "SplitView", "build_report", "render_report", "training_curves_png"]

logger = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """One model's results on the labelled split."""

    name: str
    metrics: dict[str, float]
    ranks: np.ndarray  # [Q] 1-based rank of each query's true image in the whole gallery
    top_scores: np.ndarray  # [Q, k]
    top_indices: np.ndarray  # [Q, k]


def _run_model(model: Any, name: str, split: LabelledSplit, args: ReportArguments) -> ModelRun:
    from cnclip_lora.inference.search import rank

    # The evaluator `cnclip-lora evaluate` and the Trainer score with; bare metric names for the table.
    evaluator = split.evaluator(name="", batch_size=args.batch_size)
    queries, gallery = evaluator.embed(model)
    metrics = evaluator.score(queries, gallery)
    scores, indices = rank(queries, gallery, k=min(args.top_k, len(split.names)))
    return ModelRun(name, metrics, evaluator.true_ranks(queries, gallery), scores, indices)


# ------------------------------------------------------------------------------------ rendering


class _Thumbnails:
    """Each image's JPEG thumbnail, encoded once and stored once in the page however often it is shown
    (the page's ``<img data-t=N>`` tags are filled from one table as their page is opened)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.uris: list[str] = []
        self._index: dict[str, int] = {}

    def ref(self, path: str) -> int:
        if path not in self._index:
            self._index[path] = len(self.uris)
            self.uris.append(self._encode(path))
        return self._index[path]

    def _encode(self, path: str) -> str:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((2 * self.size, 2 * self.size))  # shown at `size`; twice that when enlarged
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        except OSError as err:
            logger.warning("report: cannot read %s (%s); shown as a blank tile", path, err)
            return ""


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
figure .known{color:#666;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figure.true img{border-color:#1a9c3a}
figure.true figcaption{color:#1a9c3a;font-weight:600}
.truth img{border:3px dashed #1a9c3a}
.good{color:#1a9c3a}.bad{color:#c0392b}
img.thumb{cursor:zoom-in}
details summary h3{display:inline}
.pager{margin:6px 0}.pager button{margin-right:4px}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.7);display:flex;align-items:center;justify-content:center}
#zoom[hidden]{display:none}
#zoom img{min-width:240px;image-rendering:auto;background:#fff;cursor:zoom-out}
"""


@dataclass
class SplitView:
    """One labelled split as the page shows it: its queries, its gallery and each model's results."""

    name: str
    titles: Sequence[str]
    labels: Sequence[int]
    names: Sequence[str]
    image_dir: str | os.PathLike
    runs: Sequence[ModelRun]
    #: Titles the data pairs with gallery images, shown under a candidate (what the gallery knows).
    known_titles: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fixed(self) -> list[int]:
        """Queries whose true image is first under ``runs[0]`` and not under ``runs[1]``."""
        if len(self.runs) < 2:
            return []
        main, base = self.runs[0], self.runs[1]
        return [q for q in range(len(self.titles)) if main.ranks[q] == 1 and base.ranks[q] > 1]

    @property
    def broken(self) -> list[int]:
        if len(self.runs) < 2:
            return []
        main, base = self.runs[0], self.runs[1]
        return [q for q in range(len(self.titles)) if main.ranks[q] > 1 and base.ranks[q] == 1]

    def worst_first(self) -> list[int]:
        return sorted(range(len(self.titles)), key=lambda q: (-int(self.runs[0].ranks[q]), q))


def _metrics_table(view: SplitView) -> str:
    cols = [(d, m) for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10", "MR")]
    head = "".join(f"<th>{d} {m}</th>" for d, m in cols)
    rows = []
    for run in view.runs:
        cells = "".join(f"<td>{run.metrics[f'{d}_{m}']:.1f}</td>" for d, m in cols)
        rows.append(
            f"<tr><th>{html.escape(run.name)}</th>{cells}<td>{int(run.metrics['gallery_size'])}</td>"
            f"<td>{int(run.metrics['queries'])}</td></tr>"
        )
    return (
        f'<table class="metrics" id="{view.name}-metrics"><tr><th>model</th>{head}<th>gallery</th>'
        f"<th>queries</th></tr>" + "".join(rows) + "</table>"
    )


def _figure(view: SplitView, idx: int, thumbs: _Thumbnails, *, cls: str, caption: str, alt: str) -> str:
    name = view.names[idx]
    known = view.known_titles.get(name, [])
    tip = html.escape("\n".join([name, *known]))
    width = f'style="width:{thumbs.size + 6}px"'  # the title line is cut to the thumbnail's width
    line = f'<div class="known" {width}>{html.escape(known[0])}</div>' if known and cls != "truth" else ""
    ref = thumbs.ref(str(Path(view.image_dir) / name))
    return (
        f'<figure class="{cls}"><img class="thumb" data-t="{ref}" width="{thumbs.size}" height="{thumbs.size}" '
        f'alt="{html.escape(alt)}" title="{tip}"><figcaption>{caption}</figcaption>{line}</figure>'
    )


def _query_block(view: SplitView, q: int, thumbs: _Thumbnails, *, anchor: bool = True) -> str:
    ident = f' id="{view.name}-q{q}"' if anchor else ""  # the summary links to the block in the worst-first list
    relevant = positive_list(view.labels[q])
    ranks = "".join(
        f'<span class="rank" data-model="{html.escape(r.name)}">rank under {html.escape(r.name)}: '
        f"<b>{int(r.ranks[q])}</b></span>"
        for r in view.runs
    )
    truth = "".join(
        _figure(view, r, thumbs, cls="truth", caption="true image", alt="true image") for r in relevant[:5]
    )
    rows = []
    for run in view.runs:
        figs = [
            _figure(
                view,
                int(idx),
                thumbs,
                cls="true" if idx in relevant else "cand",
                caption=("&#10003; " if idx in relevant else "") + f"{score:.3f}",
                alt=view.names[idx],
            )
            for score, idx in zip(run.top_scores[q], run.top_indices[q])
            if idx >= 0
        ]
        rows.append(
            f'<div class="row"><div class="label">{html.escape(run.name)} top-{len(figs)}</div>{"".join(figs)}</div>'
        )
    return (
        f'<div class="query"{ident} data-query="{q}"><div class="title">{html.escape(view.titles[q])}</div>'
        f'<div class="ranks">{ranks}</div><div class="row"><div class="label"></div>{truth}</div>{"".join(rows)}</div>'
    )


def _paged(blocks: Sequence[str], page_size: int) -> str:
    """Blocks in pages of ``page_size``, one page shown at a time (a pager when there are several)."""
    pages = [blocks[i : i + page_size] for i in range(0, len(blocks), page_size)] or [[]]
    body = "".join(
        f'<div class="page" data-page="{p}"{" hidden" if p else ""}>{"".join(page)}</div>'
        for p, page in enumerate(pages)
    )
    if len(pages) == 1:
        return f'<div class="pages">{body}</div>'
    pager = (
        f'<nav class="pager"><button class="prev" type="button">&lsaquo; previous</button>'
        f'<span class="where">page 1 of {len(pages)}</span> '
        f'<button class="next" type="button">next &rsaquo;</button></nav>'
    )
    return f'<div class="pages">{pager}{body}</div>'


def _split_section(view: SplitView, *, max_queries: int, page_size: int, thumbs: _Thumbnails) -> str:
    main = view.runs[0]
    order = view.worst_first()[:max_queries]
    parts = [
        f'<section id="{view.name}"><h2>{html.escape(view.name)} split</h2>',
        _metrics_table(view),
        f'<h3 id="{view.name}-worst">All queries, worst-ranked under {html.escape(main.name)} first '
        f"(showing {len(order)} of {len(view.titles)})</h3>",
        _paged([_query_block(view, q, thumbs) for q in order], page_size),
    ]
    if len(view.runs) > 1:
        base = view.runs[1]
        for kind, qs, cls in (("fixed", view.fixed, "good"), ("broken", view.broken, "bad")):
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
                f'<details><summary><h3 class="{cls}" id="{view.name}-{kind}">{kind.capitalize()} by '
                f"{html.escape(main.name)} ({html.escape(what)}): {len(qs)}{more}</h3></summary>"
                + _paged([_query_block(view, q, thumbs, anchor=False) for q in shown], page_size)
                + "</details>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def _summary(views: Sequence[SplitView]) -> str:
    """The top of the page: per split the counts, links to each section and the worst queries."""
    items = []
    for view in views:
        main = view.runs[0]
        n = view.name
        links = [f'<a href="#{n}-metrics">metrics</a>', f'<a href="#{n}-worst">queries, worst first</a>']
        counts = ""
        if len(view.runs) > 1:
            links += [
                f'<a href="#{n}-fixed">fixed ({len(view.fixed)})</a>',
                f'<a href="#{n}-broken">broken ({len(view.broken)})</a>',
            ]
            counts = (
                f"; {len(view.fixed)} fixed and {len(view.broken)} broken against {html.escape(view.runs[1].name)}"
            )
        top1 = sum(1 for q in range(len(view.titles)) if main.ranks[q] == 1)
        worst = "".join(
            f'<li><a href="#{n}-q{q}">{html.escape(view.titles[q][:60])}</a>: rank {int(main.ranks[q])}</li>'
            for q in view.worst_first()[:5]
        )
        items.append(
            f'<div class="split-summary" data-split="{n}"><p><b>{html.escape(n)}</b>: {len(view.titles)} queries '
            f"against a gallery of {len(view.names)} images, {top1} with the true image first under "
            f"{html.escape(main.name)}{counts}. {' · '.join(links)}</p><p>Worst queries:</p><ol>{worst}</ol></div>"
        )
    return (
        '<nav id="summary"><p>Ranks are 1-based over the whole gallery (a tie counts against the true image); the '
        "true image has a green frame; click a thumbnail to enlarge it. "
        f'<a href="#training">Training curves</a>.</p>{"".join(items)}</nav>'
    )


def render_report(
    views: Sequence[SplitView],
    *,
    max_queries: int = 500,
    page_size: int = 25,
    thumb_size: int = 96,
    curves_png: bytes | None = None,
    curves_note: str = "",
) -> str:
    """The report page as one HTML string: one section per split. In each view ``runs[0]`` is the
    model inspected; ``runs[1]``, if any, the baseline it is compared with (fixed = top-1 now, not
    under the baseline)."""
    thumbs = _Thumbnails(thumb_size)
    sections = [_split_section(v, max_queries=max_queries, page_size=page_size, thumbs=thumbs) for v in views]
    parts = [
        "<!DOCTYPE html><html lang='zh'><head><meta charset='utf-8'><title>cnclip-lora report</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Retrieval report: {html.escape(' and '.join(v.name for v in views))}</h1>",
        _summary(views),
        *sections,
        '<h2 id="training">Training curves</h2>',
    ]
    if curves_png:
        parts.append(
            f'<img id="curves" alt="training curves" src="data:image/png;base64,'
            f'{base64.b64encode(curves_png).decode("ascii")}">'
        )
    else:
        parts.append(f"<p id='no-curves'>{html.escape(curves_note or 'no training curves')}</p>")
    # The thumbnail table (JSON; "</" escaped so no data can close the script element).
    table = json.dumps(thumbs.uris).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="thumbs">{table}</script>')
    parts.append(_SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts)


#: Pages: show one page of each list, fill its thumbnails from the table, follow links into a hidden
#: page. Click a thumbnail: it is shown at its stored size (twice the thumbnail's); click to close.
_SCRIPT = """<div id="zoom" hidden></div><script>
const thumbs = JSON.parse(document.getElementById('thumbs').textContent);
const fill = (root) => root.querySelectorAll('img[data-t]:not([src])').forEach(
  (i) => { i.src = thumbs[+i.dataset.t]; });
function showPage(pages, p) {
  const all = [...pages.querySelectorAll(':scope > .page')];
  p = Math.max(0, Math.min(all.length - 1, p));
  all.forEach((el, i) => { el.hidden = i !== p; });
  const where = pages.querySelector(':scope > .pager .where');
  if (where) where.textContent = 'page ' + (p + 1) + ' of ' + all.length;
  pages.dataset.page = p; fill(all[p]);
}
document.querySelectorAll('.pages').forEach((pages) => showPage(pages, 0));
function reveal() {
  const el = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  const page = el && el.closest('.page');
  if (page) { showPage(page.parentElement, +page.dataset.page); el.scrollIntoView(); }
}
window.addEventListener('hashchange', reveal); reveal();
document.querySelectorAll('details').forEach((d) => d.addEventListener('toggle', () => { if (d.open) fill(d); }));
const zoom = document.getElementById('zoom');
document.addEventListener('click', (ev) => {
  const t = ev.target;
  if (t.matches && t.matches('.pager button')) {
    const pages = t.closest('.pages');
    showPage(pages, +pages.dataset.page + (t.classList.contains('next') ? 1 : -1));
  } else if (t.classList && t.classList.contains('thumb')) {
    const big = document.createElement('img'); big.src = t.src; big.alt = t.alt;
    zoom.replaceChildren(big); zoom.hidden = false;
  } else if (zoom.contains(t)) { zoom.hidden = true; }
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
    """Score each requested labelled split with each model and write the HTML report (atomically)."""
    from dataclasses import replace

    from cnclip_lora.data.dataset import answers_problem
    from cnclip_lora.inference.model import check_device
    from cnclip_lora.retrieve.run import open_model, scored_split

    check_device(args.device)
    args.check_sources()
    if args.training_dir and not (Path(args.training_dir) / "trainer_state.json").is_file():
        raise ConfigError(f"--training_dir {args.training_dir}: no trainer_state.json there.")
    splits = []
    for name in args.report_splits():  # every split validated before any model loads
        one = replace(args, split=name)
        try:
            splits.append(scored_split(one, args.adapter, args.adapter_revision))
        except DataError as err:
            # Not asked for by name (--split all) and only the answers are wrong: the page goes on without it.
            if name != "test" or args.split != "all" or (problem := answers_problem(err)) is None:
                raise
            logger.warning("the test queries are not shown: the answers file is not usable (%s)", problem)
            continue
        except CnClipLoraError as err:
            if name != "test" or args.split != "all" or "needs answers" not in str(err):
                raise
            logger.info("the test queries are not shown: they have no relevant images to score")
            continue
        if args.baseline_adapter and name == "val":
            scored_split(one, args.baseline_adapter)  # the baseline must have been validated on the same images
    models = [("tuned" if args.adapter else "base", args.adapter)]
    if args.compare_base:
        models.append(("base", None))
    elif args.baseline_adapter:
        models.append(("baseline", args.baseline_adapter))
    runs: list[list[ModelRun]] = [[] for _ in splits]
    for label, adapter in models:  # each model loaded once, for every split
        model = open_model(args, adapter=adapter)
        for i, split in enumerate(splits):
            runs[i].append(_run_model(model, label, split, args))
        del model
    views = [
        SplitView(s.name, s.titles, s.labels, s.names, s.image_dir, r, s.known_titles) for s, r in zip(splits, runs)
    ]
    curves, note = _curves(args)
    page = render_report(
        views,
        max_queries=args.max_queries,
        page_size=args.page_size,
        thumb_size=args.thumb_size,
        curves_png=curves,
        curves_note=note,
    )
    with atomic_path(args.output) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Path(args.output)
