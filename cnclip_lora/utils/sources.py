"""Tell a local folder from a Hub id before anything is loaded, and say the real cause when neither works.

Without this, a typo in a local path (``demo_output/tiny-modle``) is handed to the Hub client,
which retries for half a minute and then blames the internet. Here a name that looks like a
path (or is not a valid Hub id) and names no existing folder fails at once with the nearest
existing name; a Hub id is only ever fetched when the Hub answers, and when it does not, a copy
in the local cache is used or one line says what is missing.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cnclip_lora.errors import CnClipLoraError, ConfigError

__all__ = [
    "HubSource",
    "check_source",
    "hub_reachable",
    "hub_timeout_message",
    "looks_local",
    "nearest_existing",
    "not_found",
    "use_hub_timeouts",
]

logger = logging.getLogger(__name__)


def looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local path (and never a Hub id ``user/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.endswith("/"):
        return True
    if name.count("/") > 1 or (len(name) > 1 and name[1] == ":"):
        return True
    first = name.split("/", 1)[0]
    if "/" in name and Path(first).is_dir():
        return True  # `demo_output/tiny-modle`: its first part is a folder here
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def nearest_existing(path: str | os.PathLike) -> str | None:
    """The existing path closest to ``path``: its deepest existing parent, then the closest name per part."""
    parts = Path(os.path.expanduser(os.fspath(path))).parts
    if not parts:
        return None
    base = Path(parts[0]) if Path(parts[0]).is_absolute() else Path(".")
    rest = parts[1:] if Path(parts[0]).is_absolute() else parts
    guessed = False
    for part in rest:
        if (base / part).exists():
            base = base / part
            continue
        try:
            names = [p.name for p in base.iterdir() if not p.name.startswith(".")]
        except OSError:
            return None
        match = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        if not match:
            lower = {n.lower(): n for n in names}
            if part.lower() in lower:
                match = [lower[part.lower()]]
            else:
                return None
        base, guessed = base / match[0], True
    return str(base) if guessed else None


def not_found(name: str, option: str, what: str) -> ConfigError:
    guess = nearest_existing(name)
    hint = f"; did you mean {guess!r}?" if guess else ""
    if not guess:
        parent = Path(os.path.expanduser(name)).parent
        while not parent.is_dir() and parent != parent.parent:
            parent = parent.parent
        if parent.is_dir():
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            hint = f" ({str(parent)!r} holds: {shown or 'no folders'})"
    return ConfigError(f"{option} {name!r}: {what} folder not found{hint}")


@functools.cache
def _probe(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host} unreachable: {err.strerror or err}"


#: Seconds to open a connection to the Hub.
HUB_CONNECT_TIMEOUT = 10.0


def use_hub_timeouts() -> float:
    """Bound every request of huggingface_hub's shared HTTP client: connecting
    :data:`HUB_CONNECT_TIMEOUT` s, each read or write ``HF_HUB_DOWNLOAD_TIMEOUT`` s (the Hub
    client's own setting, 10 by default; a large download is many reads, each bounded). Its calls
    pass ``timeout=None`` (wait forever) by default, which hangs on a server that accepted the
    connection and never answers; a request hook fills in only the limits a call left unset.
    Returns the read timeout."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    seconds = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    client = get_session()
    hooks = client.event_hooks
    if _bound_timeouts not in hooks.get("request", []):
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _bound_timeouts]}
    return seconds


def _bound_timeouts(request: Any) -> None:
    from huggingface_hub import constants

    read = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    given = request.extensions.get("timeout") or {}
    limits = {"connect": HUB_CONNECT_TIMEOUT, "read": read, "write": read, "pool": HUB_CONNECT_TIMEOUT}
    request.extensions["timeout"] = {k: given.get(k) if given.get(k) is not None else v for k, v in limits.items()}


def hub_timeout_message(err: BaseException) -> str | None:
    """For a Hub call that timed out, why, naming the endpoint and the setting; else ``None``."""
    if "timeout" not in type(err).__name__.lower() and "timed out" not in str(err).lower():
        return None
    from huggingface_hub import constants

    return (
        f"{constants.ENDPOINT} accepted the connection but did not answer within "
        f"{float(constants.HF_HUB_DOWNLOAD_TIMEOUT):g} s (raise HF_HUB_DOWNLOAD_TIMEOUT for a slow link)"
    )


def _hub_stalled(repo_id: str, revision: str | None) -> str | None:
    """Why the Hub, though it accepts connections, cannot serve ``repo_id`` now (it does not answer
    in time), or ``None``. One bounded request instead of the loaders' retry loops, which would
    retry each file for minutes; any answer (including "no such repo") is left to the loaders."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=use_hub_timeouts())
    except Exception as err:  # only a timeout is decided here
        return hub_timeout_message(err)
    return None


def hub_reachable(timeout: float = 3.0) -> str | None:
    """``None`` when the Hub endpoint accepts a connection, else why not (one short reason).

    One TCP connection (remembered per endpoint for the process) instead of the Hub client's
    retry loop, which takes half a minute to report a missing network.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    use_hub_timeouts()  # every Hub call is preceded by this probe: from here on none waits forever
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    return _probe(url.hostname or "huggingface.co", port, timeout)


class HubSource:
    """How to load a Hub id: ``local_files_only`` is set when the Hub is unreachable but a copy is cached."""

    def __init__(self, local_files_only: bool = False):
        self.local_files_only = local_files_only

    def kwargs(self) -> dict:
        return {"local_files_only": True} if self.local_files_only else {}


def check_source(
    name: str, *, option: str, what: str = "model", revision: str | None = None, cached_file: str = "config.json"
) -> HubSource | None:
    """Check a ``--model_name_or_path``/``--adapter`` value before any loading.

    Returns ``None`` for an existing local path, or a :class:`HubSource` for a Hub id.

    Raises:
        ConfigError: A local-looking name (or an invalid Hub id) that names no existing folder:
            "folder not found" with the nearest existing name.
        CnClipLoraError: A Hub id, the Hub unreachable, and no copy in the local cache.
    """
    if Path(os.path.expanduser(name)).exists():
        return None
    if looks_local(name):
        raise not_found(name, option, what)
    why = hub_reachable() or _hub_stalled(name, revision)
    if why is None:
        return HubSource()
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, cached_file, revision=revision)
    if isinstance(cached, str):
        logger.info("%s %s: the Hub is not reachable (%s); using the cached copy", option, name, why)
        return HubSource(local_files_only=True)
    raise CnClipLoraError(
        f"{option} {name!r} is a Hub id that is not in the local cache, and the Hub cannot be reached ({why}); "
        f"connect once to download it, or pass a local {what} folder"
    )
