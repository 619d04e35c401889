"""``cnclip-lora report``: one self-contained HTML page of retrieval results."""

from __future__ import annotations

from typing import Any

from cnclip_lora.commands.base import DataclassCommand


class ReportCommand(DataclassCommand):
    name = "report"
    help = "one self-contained HTML page: metrics, per-query top-k thumbnails, fixed/broken queries, curves"

    arguments = "ReportArguments"

    def run(self, args: Any) -> int:
        from cnclip_lora.retrieve.report import build_report

        print(f"report written to {build_report(args)}")
        return 0
