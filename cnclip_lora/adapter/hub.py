"""Share trained adapters on the Hugging Face Hub, and fetch them back.

A training folder holds more than an adapter: a pickled ``training_args.bin``,
intermediate checkpoints, TensorBoard runs, maybe base weights. Only an explicit
allow-list of safe, small files is ever uploaded or downloaded, and a folder whose
adapter exists only as a pickle is refused rather than loaded.

Tokens are never handled here: ``token=None`` lets huggingface_hub resolve the
``HF_TOKEN`` variable or the ``hf auth login`` cache, and no message or log line of
this module carries a token.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cnclip_lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from cnclip_lora.adapter.model_card import write_model_card
from cnclip_lora.adapter.validate import CONVERT_HINT, check_adapter_dir
from cnclip_lora.errors import CnClipLoraError, UnsafeArtifactError
from cnclip_lora.utils.files import is_pickle
from cnclip_lora.utils.sources import hub_reachable, hub_timeout_message, looks_local, not_found, use_hub_timeouts

__all__ = [
    "ADAPTER_FILES",
    "adapter_files",
    "check_adapter_dir",
    "push_adapter",
    "resolve_adapter",
]

logger = logging.getLogger(__name__)

# Exact top-level names (also valid as snapshot_download allow_patterns): nothing
# else in a training folder is part of a shareable adapter.
ADAPTER_FILES = (
    WEIGHTS_FILE,
    CONFIG_FILE,
    "preprocessor_config.json",
    "processor_config.json",
    "vocab.txt",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "cnclip_lora.json",
    "all_results.json",
    "eval_results.json",
    "train_results.json",
    "training_args.json",
    "README.md",
)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of whichever HTTP client this huggingface_hub version uses.

    HTTP status errors are ``HfHubHTTPError`` (an ``OSError``) in every version; only
    transport failures surface as the client library's own exception types.
    """
    found: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _redact(text: str, token: str | None) -> str:
    """Mask the token in use (given, or resolved from HF_TOKEN / the login cache) in ``text``.

    A proxy or server may echo credentials in an error body, which becomes our message.
    """
    token = token or get_token()
    return text.replace(token, "***") if token else text


def adapter_files(output_dir: str | os.PathLike) -> list[str]:
    """The allow-listed files present in ``output_dir`` (sorted top-level names).

    Args:
        output_dir: A training output directory.
    """
    folder = Path(output_dir)
    return sorted(name for name in ADAPTER_FILES if (folder / name).is_file())


def push_adapter(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
) -> str:
    """Upload the adapter of a training folder, with a fresh model card, to the Hub.

    The folder is validated first; once the repo exists, README.md is regenerated
    from the folder's records and metrics; then one commit adds exactly
    :func:`adapter_files` (never ``training_args.bin``, checkpoints, logs or base weights).

    Args:
        output_dir: The training output directory.
        repo_id: Target model repo, ``"user/name"`` (a bare ``"name"`` goes to the token's
            namespace); created (public unless ``private``) if missing.
        private: Create the repo private. An existing repo keeps its visibility.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the ``hf auth login`` cache.
        revision: Branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: Commit summary; a default names the package.
        license: License id written in the card metadata.

    Returns:
        The URL of the new commit.
    """
    folder = check_adapter_dir(output_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise CnClipLoraError(f"--repo_id {repo_id!r} is not a valid Hub repo id ('user/name'): {err}") from None
    use_hub_timeouts()
    api = HfApi(token=token)
    target = f"{repo_id}@{revision or 'main'}"
    try:
        # A bare name lands in the token owner's namespace: the returned URL has the full id.
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        target = f"{repo_id}@{revision or 'main'}"
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        write_model_card(folder, repo_id=repo_id, license=license)
        names = adapter_files(folder)
        logger.info("Pushing %d file(s) from %s to %s: %s", len(names), folder, target, ", ".join(names))
        commit = api.create_commit(
            repo_id,
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names],
            commit_message=commit_message or "Upload cnclip-lora adapter",
            revision=revision,
            repo_type="model",
        )
    except _transport_errors() as err:
        if (timed_out := hub_timeout_message(err)) is not None:
            raise CnClipLoraError(f"Pushing {folder} to {target} failed: {timed_out}.") from None
        raise CnClipLoraError(
            _redact(
                f"Pushing {folder} to {target} on {api.endpoint} failed: {err}. Check the repo id and that your token "
                "has write access (pass --token, set HF_TOKEN or run `hf auth login`).",
                token,
            )
        ) from None  # the chained HTTP error may carry request details; the message already names the cause
    logger.info("Pushed %s: %s", target, commit.commit_url)
    return commit.commit_url


def _remote_pickles(repo_id: str, revision: str | None, token: str | None) -> list[str]:
    """Pickled files in a Hub repo, to explain a missing safetensors adapter (best effort)."""
    try:
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except _transport_errors():
        return []  # offline or unreachable: the generic message still holds
    return sorted(f for f in files if "/" not in f and is_pickle(f))


def resolve_adapter(adapter: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """Return a local folder holding the adapter ``adapter`` names.

    A local directory is checked and returned as is. Anything else that is a valid
    Hub id is downloaded (only :data:`ADAPTER_FILES`) into the huggingface_hub cache,
    which also serves it offline (``HF_HUB_OFFLINE=1``) once cached.

    Args:
        adapter: A local directory or a Hub model id (``"user/name"``).
        revision: Hub branch, tag or commit (Hub ids only).
        token: Hub token for private repos; ``None`` uses huggingface_hub's resolution.

    Returns:
        The adapter folder.

    Raises:
        UnsafeArtifactError: The adapter exists only as pickled weights.
        CnClipLoraError: No such local directory or Hub repo/revision, or the Hub is unreachable
            and the adapter is not cached.
    """
    local = Path(adapter).expanduser()
    if local.is_dir():
        return check_adapter_dir(local, source=adapter)
    if local.exists() or looks_local(adapter):
        if local.exists():
            raise CnClipLoraError(
                f"--adapter {adapter!r} is a file; pass the folder a training run saved its adapter in."
            )
        raise not_found(adapter, "--adapter", "adapter")
    where = f"{adapter!r}" + (f" at revision {revision!r}" if revision else "")
    offline = hub_reachable() is not None  # then only the cache can serve it, without the client's retry loop
    try:
        path = snapshot_download(
            adapter, revision=revision, token=token, allow_patterns=list(ADAPTER_FILES), local_files_only=offline
        )
    except RevisionNotFoundError:
        raise CnClipLoraError(f"Hub repo {adapter!r} has no revision {revision!r}.") from None
    except RepositoryNotFoundError:
        raise CnClipLoraError(
            f"Adapter {adapter!r} is neither a local directory nor a model repo on the Hub you can access "
            "(for a private repo pass a token or run `hf auth login`)."
        ) from None
    except _transport_errors() as err:
        reason = hub_timeout_message(err) or hub_reachable() or str(err).splitlines()[0]
        raise CnClipLoraError(
            _redact(
                f"Cannot fetch adapter {where}: it is not in the local cache and the Hub is unreachable ({reason}).",
                token,
            )
        ) from None
    folder = Path(path)
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = _remote_pickles(adapter, revision, token)
        if pickles:
            raise UnsafeArtifactError(
                f"Hub adapter {where} has no adapter_model.safetensors, only pickled weights ({', '.join(pickles)}), "
                f"which can execute code when loaded; they were not downloaded. {CONVERT_HINT}"
            )
    return check_adapter_dir(folder, source=adapter)
