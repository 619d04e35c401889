"""``cnclip-lora push``: upload an adapter folder to the Hub."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


class PushCommand(Command):
    name = "push"
    help = "upload an adapter folder (adapter, processor, record, model card) to the Hub"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("output_dir", help="Training output directory holding adapter_model.safetensors.")
        parser.add_argument("--repo_id", required=True, help="Target Hub model repo, 'user/name'.")
        parser.add_argument(
            "--private", action="store_true", help="Create the repo private (an existing repo keeps its visibility)."
        )
        parser.add_argument(
            "--token",
            default=None,
            help="Hub token with write access. Prefer HF_TOKEN or `hf auth login`: a token on the command line "
            "is visible in the process list and shell history.",
        )
        parser.add_argument(
            "--revision", default=None, help="Branch to commit to, created if missing (default: main)."
        )
        parser.add_argument("--license", default=None, help="License id for the model card metadata, e.g. apache-2.0.")
        parser.add_argument("--commit_message", default=None, help="Commit summary.")

    def run(self, args: argparse.Namespace) -> int:
        from cnclip_lora.adapter.hub import push_adapter

        url = push_adapter(
            args.output_dir,
            args.repo_id,
            private=args.private,
            token=args.token,
            revision=args.revision,
            commit_message=args.commit_message,
            license=args.license,
        )
        print(url)
        return 0
