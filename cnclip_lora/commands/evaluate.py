"""``cnclip-lora evaluate``: Recall@1/5/10 and MR on a labelled split."""

from __future__ import annotations

import json
from typing import Any

from cnclip_lora.commands.base import DataclassCommand
from cnclip_lora.utils.distributed import is_main_process


class EvaluateCommand(DataclassCommand):
    name = "evaluate"
    help = "Recall@1/5/10 and MR (text-to-image and image-to-text) on a labelled split"

    arguments = "EvaluateArguments"

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.run import evaluate_retrieval

        metrics = evaluate_retrieval(args)
        if is_main_process():
            print(json.dumps(metrics, indent=2, ensure_ascii=False))
        return 0
