"""``cnclip-lora demo``: the main job on the embedded default (tiny model + sample data)."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


class DemoCommand(Command):
    name = "demo"
    help = "the main job on the embedded default: tiny model + xfdata, base vs fine-tuned"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data_dir", default="xfdata", help="competition-layout data (default: the committed sample)"
        )
        parser.add_argument("--workdir", default="demo_output", help="tiny model, adapter and caches go here")
        parser.add_argument("--output", default="prediction_result/submit.csv", help="the submission file")
        parser.add_argument("--num_train_epochs", type=float, default=None, help="override the demo's epoch budget")
        parser.add_argument("--max_steps", type=int, default=None, help="override the demo's budget with a step count")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.demo.run import run_demo

        run_demo(**vars(args))
        return 0
