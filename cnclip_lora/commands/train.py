"""``cnclip-lora train``: every TrainingArguments flag, a YAML/JSON recipe, then the package's own options."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cnclip_lora.commands.base import Command, print_metrics
from cnclip_lora.utils.distributed import is_main_process


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
                print_metrics(result.eval_metrics)
            if result.pushed_to:
                print(f"pushed to {result.pushed_to}")
        return 0
