"""Shared helpers for the benchmark scripts: machine record, fresh-process runs, tables, JSON.

Every variant runs in its own fresh Python process (so peak RSS is that variant's alone and
no variant warms caches for the next), variants are interleaved over the repeats (A B C A B C
...) so a noisy neighbour on a shared machine hits all of them alike, and ratios are taken
between medians of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "peak_rss_mb", "run_child", "child_main", "median_by_variant", "print_table", "write_json"]

_RESULT_TAG = "BENCH_RESULT "


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a figure needs beside it to be comparable: cores, CPU, versions, date."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest finished child), in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports kB


def run_child(script: str, variant: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``script --child VARIANT ...`` in a fresh interpreter and return the JSON it reports."""
    cmd = [sys.executable, script, "--child", variant, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG) :])
    raise RuntimeError(f"{variant} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def child_main(result: dict[str, Any]) -> None:
    """Report a child's result (with its peak RSS) on stdout for :func:`run_child`."""
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    result.setdefault("peak_rss_children_mb", round(peak_rss_mb(children=True), 1))
    print(_RESULT_TAG + json.dumps(result), flush=True)


def median_by_variant(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per variant: the median of ``key`` over repeats, its spread, and the max peak RSS."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        values = [r[key] for r in mine]
        out[name] = {
            key: statistics.median(values),
            f"{key}_all": values,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "peak_rss_children_mb": max(r.get("peak_rss_children_mb", 0.0) for r in mine),
        }
        if all("setup_s" in r for r in mine):
            out[name]["setup_s"] = statistics.median(r["setup_s"] for r in mine)
    return out


def print_table(rows: list[list[Any]], header: list[str]) -> str:
    """Print (and return) a Markdown table, ready to paste into RESULTS.md."""
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write results atomically (a crash never leaves half a JSON file)."""
    from cnclip_lora.utils.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path
