"""``cnclip-lora`` / ``python -m cnclip_lora``: parse, then call the package's functions.

Input errors (:class:`cnclip_lora.errors.CnClipLoraError`) are printed as one message and exit
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

__all__ = ["main"]

COMMANDS: dict[str, str] = {
    "train": "fine-tune LoRA adapters (all TrainingArguments flags; accepts a YAML/JSON recipe)",
    "retrieve": "rank the gallery for the test queries; write the submission and top-k files",
    "evaluate": "Recall@1/5/10 and MR (text-to-image and image-to-text) on a labelled split",
    "check-data": "validate a data folder in the competition layout and print a summary",
    "make-demo-data": "write a synthetic dataset in the competition layout",
    "make-tiny-model": "build a tiny random Chinese-CLIP model + processor offline",
    "push": "upload an adapter folder (adapter, processor, record, model card) to the Hub",
    "demo": "the main job on the embedded default: tiny model + xfdata, base vs fine-tuned",
    "cache": "show (or --clear) the pixel and embedding caches under HF_DATASETS_CACHE/cnclip_lora",
}


def _is_main_process() -> bool:
    """Under torchrun/accelerate every process runs the command; only rank 0 reports."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _print_metrics(metrics: dict) -> None:
    if not _is_main_process():
        return
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.2f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def _cmd_train(argv: Sequence[str]) -> int:
    from cnclip_lora.train import train

    result = train(argv) if "-h" not in argv and "--help" not in argv else _train_help()
    if result is not None and _is_main_process():
        print(f"adapter saved to {result.output_dir}")
        if result.eval_metrics:
            _print_metrics(result.eval_metrics)
        if result.pushed_to:
            print(f"pushed to {result.pushed_to}")
    return 0


def _train_help() -> None:
    from transformers import HfArgumentParser

    from cnclip_lora.config import CnClipTrainingArguments, DataArguments, LoraArguments, ModelArguments

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, LoraArguments, CnClipTrainingArguments),
        prog="cnclip-lora train",
        description="Fine-tune Chinese-CLIP with LoRA. Usage: cnclip-lora train [RECIPE.yaml] [--flag value ...]",
    )
    parser.print_help()
    return None


def _retrieval_args(argv: Sequence[str], prog: str):
    from transformers import HfArgumentParser

    from cnclip_lora.retrieve import RetrievalArguments

    parser = HfArgumentParser(RetrievalArguments, prog=prog)
    (args,) = parser.parse_args_into_dataclasses(args=list(argv))
    return args


def _cmd_retrieve(argv: Sequence[str]) -> int:
    from cnclip_lora.retrieve import retrieve

    args = _retrieval_args(argv, "cnclip-lora retrieve")
    result = retrieve(args)
    if args.output and _is_main_process():
        print(f"submission written to {args.output}")
    if args.topk_output and _is_main_process():
        print(f"top-{args.top_k} written to {args.topk_output}")
    _print_metrics(result.metrics)
    return 0


def _cmd_evaluate(argv: Sequence[str]) -> int:
    from cnclip_lora.retrieve import evaluate

    metrics = evaluate(_retrieval_args(argv, "cnclip-lora evaluate"))
    if _is_main_process():
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


def _cmd_check_data(argv: Sequence[str]) -> int:
    from cnclip_lora.data import check_data

    parser = argparse.ArgumentParser(prog="cnclip-lora check-data", description=COMMANDS["check-data"])
    parser.add_argument("data_dir")
    parser.add_argument("--val_size", type=float, default=0.1, help="held-out share (0<x<1) or count")
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--skip_bad_rows", action="store_true", help="treat bad training rows as skippable")
    parser.add_argument("--no_check_images", action="store_true", help="only check that images exist (faster)")
    args = parser.parse_args(argv)
    report = check_data(args.data_dir, val_size=args.val_size, seed=args.split_seed,
                        skip_bad_rows=args.skip_bad_rows, check_images=not args.no_check_images)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_make_demo_data(argv: Sequence[str]) -> int:
    from cnclip_lora.demo_data import DOMAINS, make_demo_data

    parser = argparse.ArgumentParser(prog="cnclip-lora make-demo-data", description=COMMANDS["make-demo-data"])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=600, help="training pairs")
    parser.add_argument("--n_queries", type=int, default=100, help="test queries (each with its own target image)")
    parser.add_argument("--n_distractors", type=int, default=300, help="extra gallery images")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--domain", choices=list(DOMAINS), default=DOMAINS[0])
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT_DIR")
    args = parser.parse_args(argv)
    counts = make_demo_data(args.out_dir, seed=args.seed, n_train=args.n_train, n_queries=args.n_queries,
                            n_distractors=args.n_distractors, image_size=args.image_size, domain=args.domain,
                            overwrite=args.overwrite)
    print(f"wrote {args.out_dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def _cmd_make_tiny_model(argv: Sequence[str]) -> int:
    from cnclip_lora.tiny_model import make_tiny_model

    parser = argparse.ArgumentParser(prog="cnclip-lora make-tiny-model", description=COMMANDS["make-tiny-model"])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out_dir, seed=args.seed, image_size=args.image_size)
    print(f"tiny Chinese-CLIP model written to {path}")
    return 0


def _cmd_push(argv: Sequence[str]) -> int:
    from cnclip_lora.hub import add_push_arguments, run_push

    parser = argparse.ArgumentParser(prog="cnclip-lora push", description=COMMANDS["push"])
    add_push_arguments(parser)
    return run_push(parser.parse_args(argv))


def _cmd_demo(argv: Sequence[str]) -> int:
    from cnclip_lora.demo import add_demo_arguments, run_demo

    parser = argparse.ArgumentParser(prog="cnclip-lora demo", description=COMMANDS["demo"])
    add_demo_arguments(parser)
    run_demo(parser.parse_args(argv))
    return 0


def _cmd_cache(argv: Sequence[str]) -> int:
    from cnclip_lora.caches import CACHE_KINDS, cache_root, cache_usage, clear_cache, human_bytes

    parser = argparse.ArgumentParser(prog="cnclip-lora cache", description=COMMANDS["cache"])
    parser.add_argument("--clear", nargs="*", choices=CACHE_KINDS, metavar="KIND",
                        help=f"delete these caches ({', '.join(CACHE_KINDS)}); none named = all")
    args = parser.parse_args(argv)
    if args.clear is not None:
        freed = clear_cache(tuple(args.clear) or CACHE_KINDS)
        print(f"freed {human_bytes(freed)} under {cache_root()}")
        return 0
    print(f"cache root: {cache_root()} (set HF_DATASETS_CACHE to move it)")
    for usage in cache_usage():
        print(f"  {usage.kind:<11} {usage.files:>6} files  {human_bytes(usage.bytes):>10}  {usage.path}")
    return 0


HANDLERS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": _cmd_train,
    "retrieve": _cmd_retrieve,
    "evaluate": _cmd_evaluate,
    "check-data": _cmd_check_data,
    "make-demo-data": _cmd_make_demo_data,
    "make-tiny-model": _cmd_make_tiny_model,
    "push": _cmd_push,
    "demo": _cmd_demo,
    "cache": _cmd_cache,
}


def _usage() -> str:
    lines = ["usage: cnclip-lora COMMAND [options]   (cnclip-lora COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"cnclip-lora: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from cnclip_lora.errors import CnClipLoraError, DataError

    try:
        return HANDLERS[command](rest)
    except DataError as err:
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        for problem in getattr(err, "problems", [])[:50]:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except CnClipLoraError as err:
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # no traceback; TrainingInterrupted says how to resume
        print(f"cnclip-lora {command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130
