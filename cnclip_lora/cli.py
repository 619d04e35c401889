"""``cnclip-lora`` / ``python -m cnclip_lora``: parse, then call the package's functions.

Input errors (:class:`cnclip_lora.errors.CnClipLoraError`) are printed as one message and exit
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from cnclip_lora.utils.distributed import is_main_process

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
    "export-onnx": "write the merged text and vision towers as ONNX (onnx extra) for onnxruntime serving",
    "cache": "show (or --clear) the pixel and embedding caches under HF_DATASETS_CACHE/cnclip_lora",
    "convert-original": "turn an official Chinese-CLIP (cn_clip) checkpoint into a Hub-layout model folder",
    "report": "one self-contained HTML page: metrics, per-query top-k thumbnails, fixed/broken queries, curves",
    "serve": "a local search service (JSON API + web page) over a gallery folder (serve extra)",
}


def _print_metrics(metrics: dict) -> None:
    if not is_main_process():
        return
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.2f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def _cmd_train(argv: Sequence[str]) -> int:
    from cnclip_lora.training.run import train

    result = train(argv) if "-h" not in argv and "--help" not in argv else _train_help()
    if result is not None and is_main_process():
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

    from cnclip_lora.retrieve.run import RetrievalArguments

    parser = HfArgumentParser(RetrievalArguments, prog=prog)
    (args,) = parser.parse_args_into_dataclasses(args=list(argv))
    return args


def _cmd_retrieve(argv: Sequence[str]) -> int:
    from cnclip_lora.retrieve.run import retrieve

    args = _retrieval_args(argv, "cnclip-lora retrieve")
    result = retrieve(args)
    if args.output and is_main_process():
        print(f"submission written to {args.output}")
    if args.topk_output and is_main_process():
        print(f"top-{args.top_k} written to {args.topk_output}")
    _print_metrics(result.metrics)
    return 0


def _cmd_evaluate(argv: Sequence[str]) -> int:
    from cnclip_lora.retrieve.run import evaluate_retrieval

    metrics = evaluate_retrieval(_retrieval_args(argv, "cnclip-lora evaluate"))
    if is_main_process():
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


def _cmd_check_data(argv: Sequence[str]) -> int:
    from cnclip_lora.data import check_data

    parser = argparse.ArgumentParser(prog="cnclip-lora check-data", description=COMMANDS["check-data"])
    parser.add_argument("data_dir", help="folder in the competition layout (train.csv, test_query.csv, image/)")
    parser.add_argument("--val_size", type=float, default=0.1, help="held-out share (0<x<1) or count")
    parser.add_argument("--split_seed", type=int, default=42, help="seed of the train/validation split (as in train)")
    parser.add_argument("--skip_bad_rows", action="store_true", help="treat bad training rows as skippable")
    parser.add_argument("--no_check_images", action="store_true", help="only check that images exist (faster)")
    args = parser.parse_args(argv)
    report = check_data(args.data_dir, val_size=args.val_size, seed=args.split_seed,
                        skip_bad_rows=args.skip_bad_rows, check_images=not args.no_check_images)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_make_demo_data(argv: Sequence[str]) -> int:
    from cnclip_lora.demo.data import DOMAINS, make_demo_data

    parser = argparse.ArgumentParser(prog="cnclip-lora make-demo-data", description=COMMANDS["make-demo-data"])
    parser.add_argument("out_dir", help="folder to write the dataset into (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same dataset")
    parser.add_argument("--n_train", type=int, default=600, help="training pairs")
    parser.add_argument("--n_queries", type=int, default=100, help="test queries (each with its own target image)")
    parser.add_argument("--n_distractors", type=int, default=300, help="extra gallery images")
    parser.add_argument("--image_size", type=int, default=224, help="side of the square images, in pixels")
    parser.add_argument("--domain", choices=list(DOMAINS), default=DOMAINS[0],
                        help="what the titles and images show (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT_DIR")
    args = parser.parse_args(argv)
    counts = make_demo_data(args.out_dir, seed=args.seed, n_train=args.n_train, n_queries=args.n_queries,
                            n_distractors=args.n_distractors, image_size=args.image_size, domain=args.domain,
                            overwrite=args.overwrite)
    print(f"wrote {args.out_dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def _cmd_make_tiny_model(argv: Sequence[str]) -> int:
    from cnclip_lora.demo.tiny_model import make_tiny_model

    parser = argparse.ArgumentParser(prog="cnclip-lora make-tiny-model", description=COMMANDS["make-tiny-model"])
    parser.add_argument("out_dir", help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--image_size", type=int, default=64, help="input image side the model expects, in pixels")
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
    from cnclip_lora.demo.run import add_demo_arguments, run_demo

    parser = argparse.ArgumentParser(prog="cnclip-lora demo", description=COMMANDS["demo"])
    add_demo_arguments(parser)
    run_demo(parser.parse_args(argv))
    return 0


def _cmd_export_onnx(argv: Sequence[str]) -> int:
    from cnclip_lora.retrieve.export_onnx import add_export_arguments, run_export

    parser = argparse.ArgumentParser(prog="cnclip-lora export-onnx", description=COMMANDS["export-onnx"])
    add_export_arguments(parser)
    return run_export(parser.parse_args(argv))


def _cmd_cache(argv: Sequence[str]) -> int:
    from cnclip_lora.utils.caches import CACHE_KINDS, cache_root, cache_usage, clear_cache, human_bytes

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


def _cmd_convert_original(argv: Sequence[str]) -> int:
    from cnclip_lora.convert import TEXT_MODELS, VISION_MODELS, convert_original
    from cnclip_lora.errors import ConfigError

    parser = argparse.ArgumentParser(prog="cnclip-lora convert-original", description=COMMANDS["convert-original"])
    parser.add_argument("ckpt", help="checkpoint written by the official training (a dict with a state_dict)")
    parser.add_argument("out_dir", help="new folder for config.json, model.safetensors, processor and tokenizer files")
    parser.add_argument("--vision_model", help=f"official vision config name: {', '.join(VISION_MODELS)}")
    parser.add_argument("--text_model", help=f"official text config name: {', '.join(TEXT_MODELS)}")
    parser.add_argument("--model_info", help="instead of the names: the merged model config as JSON (official keys)")
    parser.add_argument("--vocab", help="vocab.txt the model was trained with (default: the installed cn_clip's)")
    args = parser.parse_args(argv)
    info = None
    if args.model_info:
        try:
            info = json.loads(open(args.model_info, encoding="utf-8").read())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"--model_info {args.model_info}: {err}") from None
    path = convert_original(args.ckpt, args.out_dir, vision_model=args.vision_model, text_model=args.text_model,
                            model_info=info, vocab=args.vocab)
    print(f"converted model written to {path}")
    return 0


def _cmd_report(argv: Sequence[str]) -> int:
    from transformers import HfArgumentParser

    from cnclip_lora.retrieve.report import ReportArguments, build_report

    parser = HfArgumentParser(ReportArguments, prog="cnclip-lora report", description=COMMANDS["report"])
    (args,) = parser.parse_args_into_dataclasses(args=list(argv))
    print(f"report written to {build_report(args)}")
    return 0


def _cmd_serve(argv: Sequence[str]) -> int:
    from transformers import HfArgumentParser

    from cnclip_lora.errors import ConfigError
    from cnclip_lora.retrieve.serve import ServeArguments, serve

    parser = HfArgumentParser(ServeArguments, prog="cnclip-lora serve", description=COMMANDS["serve"])
    (args,) = parser.parse_args_into_dataclasses(args=list(argv))
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'cnclip-lora[serve]'.") from None
    serve(args)
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
    "export-onnx": _cmd_export_onnx,
    "cache": _cmd_cache,
    "convert-original": _cmd_convert_original,
    "report": _cmd_report,
    "serve": _cmd_serve,
}


def _version() -> str:
    """The installed distribution's version (what pip reports), not a copy kept in the source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnclip-lora")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _usage() -> str:
    lines = ["usage: cnclip-lora COMMAND [options]   (cnclip-lora COMMAND --help for its options)",
             "       cnclip-lora --version",
             "every command also takes --log_level debug|info|warning|error (default: the package at info, "
             "libraries at warning)", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(f"cnclip-lora {_version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"cnclip-lora: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.utils.log_setup import pop_log_level, setup_logging

    # train's TrainingArguments has --log_level of its own; the other commands take it here.
    rest, log_level = pop_log_level(rest, keep=command == "train")
    try:
        setup_logging(log_level)
    except CnClipLoraError as err:
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2

    try:
        return HANDLERS[command](rest)
    except CnClipLoraError as err:  # DataError's message already lists its problems: print it once
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # no traceback; TrainingInterrupted says how to resume
        print(f"cnclip-lora {command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130
