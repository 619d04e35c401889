"""Held-out retrieval on the demo data: the plain batch vs a 4x larger batch through the cached step.

Same tiny model, data, seed and epoch budget as ``cnclip-lora demo`` (``DEMO_TRAIN_FLAGS``); each
arm overrides only what its name says. Arms run one after another in this process (CPU).

    python benchmarks/cached_batch_demo.py                # plain B=32 vs cached B=128 (M=32), both lr 2e-3
    python benchmarks/cached_batch_demo.py --arm "B128_lr4e-3=per_device_train_batch_size=128,contrastive_mini_batch_size=32,learning_rate=4e-3"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARMS = [
    "plain_B32=per_device_train_batch_size=32",
    "cached_B128_M32=per_device_train_batch_size=128,contrastive_mini_batch_size=32",
]


def _parse_arm(text: str) -> tuple[str, dict[str, str]]:
    name, _, flags = text.partition("=")
    return name, dict(item.split("=", 1) for item in flags.split(",") if item)


def main() -> None:
    from cnclip_lora.commands.train import train_from_argv
    from cnclip_lora.demo.run import DEMO_TRAIN_FLAGS, ensure_demo_model
    from cnclip_lora.retrieve.run import EvaluateArguments, evaluate_retrieval

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", default=None, help="NAME=flag=value,flag=value (repeatable)")
    parser.add_argument("--data_dir", default=str(ROOT / "xfdata"))
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / "out" / "cached_batch_demo"))
    parser.add_argument("--num_train_epochs", type=float, default=None, help="override the demo's epochs")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    model_dir = ensure_demo_model(workdir / "tiny-model")
    common = dict(
        model_name_or_path=str(model_dir), data_dir=args.data_dir, cache_dir=str(workdir / "cache"), device="cpu"
    )
    results = []
    for name, overrides in map(_parse_arm, args.arm or DEFAULT_ARMS):
        flags = dict(DEMO_TRAIN_FLAGS, dataloader_num_workers=0, **overrides)
        if args.num_train_epochs is not None:
            flags["num_train_epochs"] = args.num_train_epochs
        out = workdir / name
        start = time.time()
        result = train_from_argv(
            [
                "--model_name_or_path",
                str(model_dir),
                "--data_dir",
                args.data_dir,
                "--output_dir",
                str(out),
                "--cache_dir",
                str(workdir / "cache"),
            ],
            **flags,
        )
        seconds = time.time() - start
        scores = evaluate_retrieval(EvaluateArguments(split="val", adapter=str(out), **common))
        if (Path(args.data_dir) / "test_answers.csv").is_file():
            scores.update(evaluate_retrieval(EvaluateArguments(split="test", adapter=str(out), **common)))
        results.append(
            {
                "arm": name,
                "flags": overrides,
                "train_s": round(seconds, 1),
                "train_loss": result.train_metrics.get("train_loss"),
                **scores,
            }
        )
        print(name, {k: v for k, v in results[-1].items() if "MR" in k or k == "train_s"}, flush=True)
    rows = [
        [r["arm"], r.get("val_t2i_MR"), r.get("test_t2i_MR"), r.get("val_gallery_size"), r["train_s"]] for r in results
    ]
    print_table(rows, ["arm", "val t2i MR", "test t2i MR", "val gallery", "train s"])
    write_json(
        workdir / "results.json", {"machine": machine_info(), "command": " ".join(sys.argv), "results": results}
    )


if __name__ == "__main__":
    main()
