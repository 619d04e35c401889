"""``python -m cnclip_lora``: the same entry point as the ``cnclip-lora`` command."""

from cnclip_lora.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
