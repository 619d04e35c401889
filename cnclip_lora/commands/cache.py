"""``cnclip-lora cache``: show or clear the pixel and embedding caches."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


class CacheCommand(Command):
    name = "cache"
    help = "show (or --clear) the pixel and embedding caches under HF_DATASETS_CACHE/cnclip_lora"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.utils.caches import CACHE_KINDS

        parser.add_argument(
            "--clear",
            nargs="*",
            choices=CACHE_KINDS,
            metavar="KIND",
            help=f"delete these caches ({', '.join(CACHE_KINDS)}); none named = all",
        )

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
