"""``cnclip-lora make-tiny-model``: a tiny random Chinese-CLIP, offline."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


class MakeTinyModelCommand(Command):
    name = "make-tiny-model"
    help = "build a tiny random Chinese-CLIP model + processor offline"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out_dir", help="folder to write the checkpoint into")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
        parser.add_argument("--image_size", type=int, default=64, help="input image side the model expects, in pixels")
        from cnclip_lora.demo.run import DEMO_MODEL

        layers = DEMO_MODEL["num_layers"]
        parser.add_argument("--num_layers", type=int, default=layers, help="transformer layers per tower")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.demo.tiny_model import make_tiny_model

        path = make_tiny_model(args.out_dir, seed=args.seed, image_size=args.image_size, num_layers=args.num_layers)
        print(f"tiny Chinese-CLIP model written to {path}")
        return 0
