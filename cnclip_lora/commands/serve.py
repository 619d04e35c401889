"""``cnclip-lora serve``: the local search service (serve extra)."""

from __future__ import annotations

from typing import Any

from cnclip_lora.commands.base import DataclassCommand


class ServeCommand(DataclassCommand):
    name = "serve"
    help = "a local search service (JSON API + web page) over a gallery folder (serve extra)"

    arguments = "ServeArguments"

    def run(self, args: Any) -> int:
        from cnclip_lora.errors import ConfigError
        from cnclip_lora.retrieve.serve import serve

        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                f"serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'cnclip-lora[serve]'."
            ) from None
        serve(args)
        return 0
