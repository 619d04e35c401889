"""``cnclip-lora retrieve``: rank the gallery for the test queries; write the submission and top-k files."""

from __future__ import annotations

from typing import Any

from cnclip_lora.commands.base import DataclassCommand, print_metrics
from cnclip_lora.utils.distributed import is_main_process


class RetrieveCommand(DataclassCommand):
    name = "retrieve"
    help = "rank the gallery for the test queries; write the submission and top-k files"

    arguments = "RetrieveArguments"

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.run import retrieve

        result = retrieve(args)
        if args.output and is_main_process():
            print(f"submission written to {args.output}")
        if args.topk_output and is_main_process():
            print(f"top-{args.top_k} written to {args.topk_output}")
        print_metrics(result.metrics)
        return 0
