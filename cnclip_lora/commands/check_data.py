"""``cnclip-lora check-data``: validate a data folder and print its summary (light: no torch)."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command
from cnclip_lora.options import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE


class CheckDataCommand(Command):
    name = "check-data"
    light = True
    help = "validate a data folder (competition or Chinese-CLIP layout) or a datasets dataset and print a summary"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "data_dir",
            nargs="?",
            default=None,
            help="data folder: the competition layout or Chinese-CLIP's (jsonl + tsv, or its lmdb/)",
        )
        parser.add_argument("--val_size", type=float, default=DEFAULT_VAL_SIZE, help="held-out share (0<x<1) or count")
        parser.add_argument(
            "--split_seed",
            type=int,
            default=DEFAULT_SPLIT_SEED,
            help="seed of the train/validation split (as in train)",
        )
        parser.add_argument("--skip_bad_rows", action="store_true", help="treat bad training rows as skippable")
        parser.add_argument("--no_check_images", action="store_true", help="only check that images exist (faster)")
        from cnclip_lora.commands.base import dataclass_parser
        from cnclip_lora.data.hf_source import DatasetOptions

        for action in dataclass_parser(DatasetOptions, prog="", description="")._actions:  # every verb's data options
            if action.option_strings and action.dest != "help":
                parser._add_action(action)

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.data import check_data
        from cnclip_lora.data.hf_source import dataset_source
        from cnclip_lora.errors import ConfigError

        dataset = dataset_source(args)
        if args.data_dir is None and dataset is None:
            raise ConfigError("check-data needs a data folder (DATA_DIR) or --dataset_name.")
        report = check_data(
            args.data_dir or "",
            dataset=dataset,
            val_size=args.val_size,
            seed=args.split_seed,
            skip_bad_rows=args.skip_bad_rows,
            check_images=not args.no_check_images,
        )
        print(report.summary())
        return 0 if report.ok else 1
