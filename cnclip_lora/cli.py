"""``cnclip-lora`` / ``python -m cnclip_lora``: parse, then call the package's functions.

Every verb is a command object (:class:`Command`): its options (``add_arguments``, or an arguments
dataclass parsed by ``HfArgumentParser``) and what it does with them (``run``). All argument
parsing lives here; the library modules take plain values. Each verb is imported only when
it runs, so ``cnclip-lora --help`` and the light verbs start without torch or transformers.

Input errors (:class:`cnclip_lora.errors.CnClipLoraError`) are printed as one message and exit
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, ClassVar, Sequence

from cnclip_lora.utils.distributed import is_main_process

__all__ = ["COMMANDS", "Command", "main"]


def _print_metrics(metrics: dict) -> None:
    if not is_main_process():
        return
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.2f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


class Command:
    """One ``cnclip-lora`` verb: ``add_arguments`` declares its options, ``run`` acts on them."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: True for a verb that never uses torch, transformers, datasets or the Hub: it starts without them.
    light: ClassVar[bool] = False

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"cnclip-lora {self.name}", description=self.help)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the verb's options on ``parser`` (argparse exits 2 on a bad flag, 0 after --help)."""

    def parse(self, argv: Sequence[str]) -> Any:
        return self.parser().parse_args(list(argv))

    def run(self, args: Any) -> int:
        """Do the work; the return value is the exit status."""
        raise NotImplementedError

    def __call__(self, argv: Sequence[str]) -> int:
        return self.run(self.parse(argv))


def _restricted(cls: type, exclude: frozenset[str]) -> type:
    """A copy of the dataclass ``cls`` without the fields in ``exclude``, for a verb that has no use for them.

    Only the parser sees the copy: the parsed values are handed to ``cls`` itself, whose own
    checks (``__post_init__``) then run as usual.
    """
    from typing import get_type_hints

    hints = get_type_hints(cls)
    kept = [
        (f.name, hints[f.name],
         dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in dataclasses.fields(cls) if f.init and f.name not in exclude
    ]  # fmt: skip
    return dataclasses.make_dataclass(cls.__name__, kept)


class DataclassCommand(Command):
    """A verb whose options are the fields of one arguments dataclass (minus ``exclude``)."""

    exclude: ClassVar[frozenset[str]] = frozenset()

    def arguments_class(self) -> type:
        raise NotImplementedError

    def parser(self) -> argparse.ArgumentParser:
        from transformers import HfArgumentParser

        return HfArgumentParser(_restricted(self.arguments_class(), self.exclude), prog=f"cnclip-lora {self.name}",
                                description=self.help)  # fmt: skip

    def parse(self, argv: Sequence[str]) -> Any:
        parser = self.parser()
        parsed, remaining = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True)
        if remaining:  # argparse's own message and exit status 2, as for the other verbs
            parser.error(f"unrecognized arguments: {' '.join(remaining)}")
        return self.arguments_class()(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)})


class TrainCommand(Command):
    name = "train"
    help = "fine-tune LoRA adapters (all TrainingArguments flags; accepts a YAML/JSON recipe)"

    def parser(self) -> argparse.ArgumentParser:
        from cnclip_lora.config import train_argument_parser

        return train_argument_parser(
            prog="cnclip-lora train",
            description="Fine-tune Chinese-CLIP with LoRA. Usage: cnclip-lora train [RECIPE.yaml] [--flag value ...] "
            "(flags after the recipe override it)",
        )

    def parse(self, argv: Sequence[str]) -> list[str]:
        if "-h" in argv or "--help" in argv:
            self.parser().print_help()
            raise SystemExit(0)
        return list(argv)  # parsed by train(), which also sets up and tears down the process group

    def run(self, args: list[str]) -> int:
        from cnclip_lora.training.run import train

        result = train(args)
        if is_main_process():
            print(f"adapter saved to {result.output_dir}")
            if result.eval_metrics:
                _print_metrics(result.eval_metrics)
            if result.pushed_to:
                print(f"pushed to {result.pushed_to}")
        return 0


#: RetrievalArguments fields only `evaluate` uses (which labelled split, and how it was drawn).
_EVALUATE_ONLY = frozenset({"split", "answers", "val_size", "split_seed", "allow_different_split"})
#: RetrievalArguments fields only `retrieve` uses (output files, assignment, ranking index).
_RETRIEVE_ONLY = frozenset({"output", "top_k", "topk_output", "assign", "use_faiss", "faiss_index"})


class RetrieveCommand(DataclassCommand):
    name = "retrieve"
    help = "rank the gallery for the test queries; write the submission and top-k files"
    exclude = _EVALUATE_ONLY

    def arguments_class(self) -> type:
        from cnclip_lora.retrieve.run import RetrievalArguments

        return RetrievalArguments

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.run import retrieve

        result = retrieve(args)
        if args.output and is_main_process():
            print(f"submission written to {args.output}")
        if args.topk_output and is_main_process():
            print(f"top-{args.top_k} written to {args.topk_output}")
        _print_metrics(result.metrics)
        return 0


class EvaluateCommand(DataclassCommand):
    name = "evaluate"
    help = "Recall@1/5/10 and MR (text-to-image and image-to-text) on a labelled split"
    exclude = _RETRIEVE_ONLY

    def arguments_class(self) -> type:
        from cnclip_lora.retrieve.run import RetrievalArguments

        return RetrievalArguments

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.run import evaluate_retrieval

        metrics = evaluate_retrieval(args)
        if is_main_process():
            print(json.dumps(metrics, indent=2, ensure_ascii=False))
        return 0


class CheckDataCommand(Command):
    name = "check-data"
    light = True
    help = "validate a data folder in the competition layout and print a summary"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("data_dir", help="folder in the competition layout (train.csv, test_query.csv, image/)")
        parser.add_argument("--val_size", type=float, default=0.1, help="held-out share (0<x<1) or count")
        parser.add_argument("--split_seed", type=int, default=42,
                            help="seed of the train/validation split (as in train)")  # fmt: skip
        parser.add_argument("--skip_bad_rows", action="store_true", help="treat bad training rows as skippable")
        parser.add_argument("--no_check_images", action="store_true", help="only check that images exist (faster)")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.data import check_data

        report = check_data(args.data_dir, val_size=args.val_size, seed=args.split_seed,
                            skip_bad_rows=args.skip_bad_rows, check_images=not args.no_check_images)  # fmt: skip
        print(report.summary())
        return 0 if report.ok else 1


class MakeDemoDataCommand(Command):
    name = "make-demo-data"
    light = True
    help = "write a synthetic dataset in the competition layout"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.demo.data import DOMAINS

        parser.add_argument("out_dir", help="folder to write the dataset into (created)")
        parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same dataset")
        parser.add_argument("--n_train", type=int, default=600, help="training pairs")
        parser.add_argument("--n_queries", type=int, default=100, help="test queries (each with its own target image)")
        parser.add_argument("--n_distractors", type=int, default=300, help="extra gallery images")
        parser.add_argument("--image_size", type=int, default=224, help="side of the square images, in pixels")
        parser.add_argument("--domain", choices=list(DOMAINS), default=DOMAINS[0],
                            help="what the titles and images show (default: %(default)s)")  # fmt: skip
        parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT_DIR")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.demo.data import make_demo_data

        counts = make_demo_data(args.out_dir, seed=args.seed, n_train=args.n_train, n_queries=args.n_queries,
                                n_distractors=args.n_distractors, image_size=args.image_size, domain=args.domain,
                                overwrite=args.overwrite)  # fmt: skip
        print(f"wrote {args.out_dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        return 0


class MakeTinyModelCommand(Command):
    name = "make-tiny-model"
    help = "build a tiny random Chinese-CLIP model + processor offline"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out_dir", help="folder to write the checkpoint into")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
        parser.add_argument("--image_size", type=int, default=64, help="input image side the model expects, in pixels")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.demo.tiny_model import make_tiny_model

        path = make_tiny_model(args.out_dir, seed=args.seed, image_size=args.image_size)
        print(f"tiny Chinese-CLIP model written to {path}")
        return 0


class PushCommand(Command):
    name = "push"
    help = "upload an adapter folder (adapter, processor, record, model card) to the Hub"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("output_dir", help="Training output directory holding adapter_model.safetensors.")
        parser.add_argument("--repo_id", required=True, help="Target Hub model repo, 'user/name'.")
        parser.add_argument("--private", action="store_true",
                            help="Create the repo private (an existing repo keeps its visibility).")  # fmt: skip
        parser.add_argument(
            "--token",
            default=None,
            help="Hub token with write access. Prefer HF_TOKEN or `hf auth login`: a token on the command line "
            "is visible in the process list and shell history.",
        )
        parser.add_argument("--revision", default=None,
                            help="Branch to commit to, created if missing (default: main).")  # fmt: skip
        parser.add_argument("--license", default=None, help="License id for the model card metadata, e.g. apache-2.0.")
        parser.add_argument("--commit_message", default=None, help="Commit summary.")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.adapter.hub import push_adapter

        url = push_adapter(args.output_dir, args.repo_id, private=args.private, token=args.token,
                           revision=args.revision, commit_message=args.commit_message, license=args.license)
        print(url)
        return 0


class DemoCommand(Command):
    name = "demo"
    help = "the main job on the embedded default: tiny model + xfdata, base vs fine-tuned"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data_dir", default="xfdata",
                            help="competition-layout data (default: the committed sample)")  # fmt: skip
        parser.add_argument("--workdir", default="demo_output", help="tiny model, adapter and caches go here")
        parser.add_argument("--output", default="prediction_result/submit.csv", help="the submission file")
        parser.add_argument("--num_train_epochs", type=float, default=None, help="override the demo's epoch budget")
        parser.add_argument("--max_steps", type=int, default=None, help="override the demo's budget with a step count")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.demo.run import run_demo

        run_demo(**vars(args))
        return 0


class ExportOnnxCommand(Command):
    name = "export-onnx"
    help = "write the merged text and vision towers as ONNX (onnx extra) for onnxruntime serving"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.retrieve.export_onnx import DEFAULT_OPSET

        parser.add_argument("out_dir", help="folder to write (text_model.onnx, vision_model.onnx, processor, record)")
        parser.add_argument("--model_name_or_path", required=True,
                            help="base Chinese-CLIP checkpoint (Hub id or folder)")  # fmt: skip
        parser.add_argument("--adapter", default=None, help="LoRA adapter folder or Hub id, merged into the weights")
        parser.add_argument("--model_revision", default=None, help="Hub branch, tag or commit of the base checkpoint")
        parser.add_argument("--adapter_revision", default=None, help="Hub branch, tag or commit of the adapter")
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                            help="ONNX opset version (default: %(default)s)")  # fmt: skip
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.retrieve.export_onnx import TEXT_FILE, VISION_FILE, export_onnx

        out = export_onnx(args.model_name_or_path, args.out_dir, args.adapter, model_revision=args.model_revision,
                          adapter_revision=args.adapter_revision, opset=args.opset,
                          overwrite=args.overwrite)  # fmt: skip
        print(f"ONNX export written to {out}: {TEXT_FILE}, {VISION_FILE}, processor and record")
        return 0


class CacheCommand(Command):
    name = "cache"
    help = "show (or --clear) the pixel and embedding caches under HF_DATASETS_CACHE/cnclip_lora"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.utils.caches import CACHE_KINDS

        parser.add_argument("--clear", nargs="*", choices=CACHE_KINDS, metavar="KIND",
                            help=f"delete these caches ({', '.join(CACHE_KINDS)}); none named = all")  # fmt: skip

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.utils.caches import CACHE_KINDS, cache_root, cache_usage, clear_cache, human_bytes

        if args.clear is not None:
            freed = clear_cache(tuple(args.clear) or CACHE_KINDS)
            print(f"freed {human_bytes(freed)} under {cache_root()}")
            return 0
        print(f"cache root: {cache_root()} (set HF_DATASETS_CACHE to move it)")
        for usage in cache_usage():
            print(f"  {usage.kind:<11} {usage.files:>6} files  {human_bytes(usage.bytes):>10}  {usage.path}")
        return 0


class ConvertOriginalCommand(Command):
    name = "convert-original"
    help = "turn an official Chinese-CLIP (cn_clip) checkpoint into a Hub-layout model folder"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.convert import TEXT_MODELS, VISION_MODELS

        parser.add_argument("ckpt", help="checkpoint written by the official training (a dict with a state_dict)")
        parser.add_argument("out_dir",
                            help="new folder for config.json, model.safetensors, processor and tokenizer files")
        parser.add_argument("--vision_model", help=f"official vision config name: {', '.join(VISION_MODELS)}")
        parser.add_argument("--text_model", help=f"official text config name: {', '.join(TEXT_MODELS)}")
        parser.add_argument("--model_info",
                            help="instead of the names: the merged model config as JSON (official keys)")
        parser.add_argument("--vocab", help="vocab.txt the model was trained with (default: the installed cn_clip's)")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.convert import convert_original
        from cnclip_lora.errors import ConfigError

        info = None
        if args.model_info:
            try:
                info = json.loads(open(args.model_info, encoding="utf-8").read())
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"--model_info {args.model_info}: {err}") from None
        path = convert_original(args.ckpt, args.out_dir, vision_model=args.vision_model, text_model=args.text_model,
                                model_info=info, vocab=args.vocab)  # fmt: skip
        print(f"converted model written to {path}")
        return 0


class ReportCommand(DataclassCommand):
    name = "report"
    help = "one self-contained HTML page: metrics, per-query top-k thumbnails, fixed/broken queries, curves"

    def arguments_class(self) -> type:
        from cnclip_lora.retrieve.report import ReportArguments

        return ReportArguments

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.report import build_report

        print(f"report written to {build_report(args)}")
        return 0


class ServeCommand(DataclassCommand):
    name = "serve"
    help = "a local search service (JSON API + web page) over a gallery folder (serve extra)"

    def arguments_class(self) -> type:
        from cnclip_lora.retrieve.serve import ServeArguments

        return ServeArguments

    def run(self, args: Any) -> int:
        from cnclip_lora.errors import ConfigError
        from cnclip_lora.retrieve.serve import serve

        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                f"serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'cnclip-lora[serve]'."
            ) from None
        serve(args)
        return 0


#: name -> command, in the order ``cnclip-lora --help`` lists them.
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        TrainCommand(), RetrieveCommand(), EvaluateCommand(), CheckDataCommand(), MakeDemoDataCommand(),
        MakeTinyModelCommand(), PushCommand(), DemoCommand(), ExportOnnxCommand(), CacheCommand(),
        ConvertOriginalCommand(), ReportCommand(), ServeCommand(),
    )
}  # fmt: skip


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
             "libraries at warning)", "", "commands:"]  # fmt: skip
    lines += [f"  {name:<16} {command.help}" for name, command in COMMANDS.items()]
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
    if command not in COMMANDS:
        print(f"cnclip-lora: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from cnclip_lora.errors import CnClipLoraError
    from cnclip_lora.utils.log_setup import pop_log_level, setup_logging

    # train's TrainingArguments has --log_level of its own; the other commands take it here.
    rest, log_level = pop_log_level(rest, keep=command == "train")
    try:
        setup_logging(log_level, libraries_too=not COMMANDS[command].light)
    except CnClipLoraError as err:
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2

    try:
        return COMMANDS[command](rest)
    except CnClipLoraError as err:  # DataError's message already lists its problems: print it once
        print(f"cnclip-lora {command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # no traceback; TrainingInterrupted says how to resume
        print(f"cnclip-lora {command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130
