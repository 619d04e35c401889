"""``cnclip-lora convert-original``: an official cn_clip checkpoint as a Hub-layout model folder."""

from __future__ import annotations

import argparse
import json

from cnclip_lora.commands.base import Command


class ConvertOriginalCommand(Command):
    name = "convert-original"
    help = "turn an official Chinese-CLIP (cn_clip) checkpoint into a Hub-layout model folder"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.convert import TEXT_MODELS, VISION_MODELS

        parser.add_argument("ckpt", help="checkpoint written by the official training (a dict with a state_dict)")
        parser.add_argument(
            "out_dir", help="new folder for config.json, model.safetensors, processor and tokenizer files"
        )
        parser.add_argument("--vision_model", help=f"official vision config name: {', '.join(VISION_MODELS)}")
        parser.add_argument("--text_model", help=f"official text config name: {', '.join(TEXT_MODELS)}")
        parser.add_argument(
            "--model_info", help="instead of the names: the merged model config as JSON (official keys)"
        )
        parser.add_argument("--vocab", help="vocab.txt the model was trained with (default: the installed cn_clip's)")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.convert import convert_original
        from cnclip_lora.errors import ConfigError

        info = None
        if args.model_info:
            from cnclip_lora.convert import check_model_info

            try:
                info = json.loads(open(args.model_info, encoding="utf-8").read())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ConfigError(f"--model_info {args.model_info}: {err}") from None
            check_model_info(info, source=f"--model_info {args.model_info}")
        path = convert_original(
            args.ckpt,
            args.out_dir,
            vision_model=args.vision_model,
            text_model=args.text_model,
            model_info=info,
            vocab=args.vocab,
        )
        print(f"converted model written to {path}")
        return 0
