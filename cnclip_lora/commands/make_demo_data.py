"""``cnclip-lora make-demo-data``: a synthetic dataset in the competition layout (light: no torch)."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


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
        parser.add_argument(
            "--domain",
            choices=list(DOMAINS),
            default=DOMAINS[0],
            help="what the titles and images show (default: %(default)s)",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT_DIR")
        parser.add_argument(
            "--layout",
            choices=["competition", "chinese-clip", "imagefolder"],
            default="competition",
            help="competition: train.csv + image/; chinese-clip: {split}_texts.jsonl + {split}_imgs.tsv, with "
            "texts that have several relevant images; imagefolder: a datasets imagefolder (metadata.jsonl)",
        )

    def run(self, args: argparse.Namespace) -> int:
        import tempfile

        from cnclip_lora.demo.data import make_demo_data

        target = args.out_dir
        if args.layout != "competition":
            staging = tempfile.TemporaryDirectory()
            target = f"{staging.name}/competition"
        counts = make_demo_data(
            target,
            seed=args.seed,
            n_train=args.n_train,
            n_queries=args.n_queries,
            n_distractors=args.n_distractors,
            image_size=args.image_size,
            domain=args.domain,
            overwrite=args.overwrite,
        )
        if args.layout == "chinese-clip":
            from cnclip_lora.demo.cnclip_data import write_cnclip_layout

            counts = write_cnclip_layout(target, args.out_dir, seed=args.seed)
        elif args.layout == "imagefolder":
            from cnclip_lora.demo.imagefolder_data import write_imagefolder

            counts = write_imagefolder(target, args.out_dir, seed=args.seed)
        if args.layout != "competition":
            staging.cleanup()
        print(f"wrote {args.out_dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        return 0
