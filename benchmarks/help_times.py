"""Median wall time of ``cnclip-lora VERB --help`` (and of a few light imports), in fresh processes.

Run: ``.venv/bin/python benchmarks/help_times.py [--repeat 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VERBS = [
    "train",
    "retrieve",
    "evaluate",
    "check-data",
    "make-demo-data",
    "make-tiny-model",
    "push",
    "demo",
    "export-onnx",
    "cache",
    "convert-original",
    "report",
    "serve",
]
IMPORTS = {
    "import transformers.TrainingArguments": "from transformers import TrainingArguments",
    "from cnclip_lora import recall_at_k": "from cnclip_lora import recall_at_k",
    "from cnclip_lora import rank": "from cnclip_lora import rank",
}


def _time(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    exe = [sys.executable, "-m", "cnclip_lora"]
    results: dict[str, float] = {}
    for verb in VERBS:
        results[f"{verb} --help"] = _time([*exe, verb, "--help"], args.repeat)
    for name, code in IMPORTS.items():
        results[name] = _time([sys.executable, "-c", code], args.repeat)
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:6.2f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": f"{os.cpu_count()} cores", "repeat": args.repeat, "median_s": results}, f, indent=1)


if __name__ == "__main__":
    main()
