"""One output folder, one run: refuse to mix a new run with another run's adapter and checkpoints.

A run writes its adapter, ``cnclip_lora.json`` and ``checkpoint-N`` folders into ``--output_dir``.
Starting another run there would overwrite the adapter but keep the old checkpoints: a later
``--resume_from_checkpoint true`` then picks one of them (with another LoRA rank it dies in a
``size mismatch``; with the same settings it silently continues the wrong run), and the
checkpoint rotation may delete the new run's checkpoints in favour of the old run's higher step
numbers. So, before any data or model is loaded:

* a fresh start (no ``--resume_from_checkpoint``) into a folder that holds a previous run's files
  is refused, naming how that run differs, unless ``--overwrite_output_dir true``, which then
  removes that run's files (:func:`remove_previous_run`);
* a resume compares the checkpoint's recorded settings (LoRA rank/alpha/dropout/targets, the
  base architecture, the split) with the requested ones and names the first differences.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cnclip_lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from cnclip_lora.adapter.record import RECORD_FILE, LoraSummary, RecordError, RunRecord
from cnclip_lora.errors import ConfigError
from cnclip_lora.options import parse_targets

__all__ = [
    "requested_settings",
    "recorded_settings",
    "settings_differences",
    "previous_run_files",
    "check_output_dir",
    "remove_previous_run",
    "resume_hint",
]

logger = logging.getLogger(__name__)


#: Files a training run writes at the top of its output folder (besides the processor files, which
#: the next run rewrites anyway). Anything else in the folder is not ours and is left alone.
RUN_FILES = (
    WEIGHTS_FILE,
    CONFIG_FILE,
    RECORD_FILE,
    "training_args.json",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)
_DEFAULT_TARGETS = None  # "Q/K/V of both towers", however the record spells it


def _targets(value: Any) -> Any:
    """Requested/recorded LoRA targets in one comparable form (``None`` = the default set)."""
    entries = parse_targets(value)
    return _DEFAULT_TARGETS if entries is None else sorted(entries)


def requested_settings(model_args: Any, data_args: Any, lora_args: Any) -> dict[str, Any]:
    """The settings a run must share with a checkpoint it resumes (and that tell runs apart).

    The base's architecture comes from its ``config.json`` only (no weights are loaded); when that
    cannot be read here, it is left out and model loading reports the problem.
    """
    from cnclip_lora.data import parse_val_size

    settings: dict[str, Any] = {
        "lora_r": lora_args.lora_r,
        "lora_alpha": lora_args.lora_alpha,
        "lora_dropout": lora_args.lora_dropout,
        "lora_target_modules": _targets(lora_args.lora_target_modules),
        "val_size": parse_val_size(data_args.val_size),
        "split_seed": data_args.split_seed,
    }
    try:
        from transformers import AutoConfig

        from cnclip_lora.adapter.base_identity import _architecture

        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
        settings["base architecture"] = _architecture(config)
    except Exception as err:  # noqa: BLE001 - reported properly where the model loads
        logger.debug("base config not readable before loading: %s", err)
    return settings


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings recorded in an adapter or checkpoint folder; ``None`` when it records none.

    ``cnclip_lora.json`` is preferred; an adapter without it (older runs, or another tool's) falls
    back to PEFT's ``adapter_config.json`` (rank, alpha and dropout only).
    """
    folder = Path(folder)
    try:
        record = RunRecord.load(folder)
    except RecordError:  # unreadable: compared by PEFT's config below; the folder is still another run's
        record = None
    out: dict[str, Any] = {}
    if record is not None:
        lora = record.lora or LoraSummary()
        for value, name in ((lora.r, "lora_r"), (lora.alpha, "lora_alpha"), (lora.dropout, "lora_dropout")):
            if value is not None:
                out[name] = value
        if lora.targets is not None:
            out["lora_target_modules"] = _targets(lora.targets)
        if record.split is not None and record.split.val_size is not None:
            out["val_size"] = record.split.val_size
            out["split_seed"] = record.split.split_seed
        identity = record.base_identity
        if identity is not None and isinstance(identity.get("architecture"), dict):
            out["base architecture"] = identity["architecture"]
            out["base_model"] = identity.get("name")
        elif record.base_model:
            out["base_model"] = record.base_model
    if "lora_r" not in out:
        adapter = _read_json(folder / CONFIG_FILE)
        if adapter is not None:
            for key, name in (("r", "lora_r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
                if key in adapter:
                    out[name] = adapter[key]
            out.setdefault("base_model", adapter.get("base_model_name_or_path"))
    return out or None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _show(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_differences(recorded: dict[str, Any], requested: dict[str, Any], where: str) -> list[str]:
    """Each setting that differs, as ``"lora_r 16 in checkpoint-40 vs 32 requested"``.

    Only settings present on both sides are compared (an older record simply says less).
    """
    diffs = []
    for key, want in requested.items():
        if key not in recorded:
            continue
        have = recorded[key]
        if key == "base architecture":
            fields = [f for f in sorted(set(have) | set(want)) if have.get(f) != want.get(f)]
            diffs += [f"base {f} {have.get(f)} in {where} vs {want.get(f)} requested" for f in fields[:3]]
        elif not _same(have, want):
            diffs.append(f"{key} {_show(have)} in {where} vs {_show(want)} requested")
    return diffs


def _checkpoints(output_dir: Path) -> list[Path]:
    from cnclip_lora.utils.files import _checkpoints as sorted_checkpoints

    try:
        return sorted_checkpoints(output_dir)
    except OSError:  # removed under us (another process)
        return []


def previous_run_files(output_dir: str | os.PathLike) -> list[Path]:
    """A previous run's files in ``output_dir``: its ``checkpoint-N`` folders and top-level run files."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return _checkpoints(out) + [out / name for name in RUN_FILES if (out / name).is_file()]


def _where(folder: Path, output_dir: Path) -> str:
    return "the adapter" if folder == output_dir else folder.name


def check_output_dir(
    output_dir: str | os.PathLike, requested: dict[str, Any], *, resume: str | None, overwrite: bool
) -> None:
    """Refuse to start a run that would mix with another run in ``output_dir`` (see module docstring).

    Args:
        output_dir: ``--output_dir``.
        requested: :func:`requested_settings` of the new run.
        resume: the complete checkpoint folder being resumed (resolved), or ``None`` for a fresh start.
        overwrite: ``--overwrite_output_dir``.

    Raises:
        ConfigError: a fresh start into another run's folder without ``--overwrite_output_dir``, or a
            resume from a checkpoint recorded with other settings.
    """
    out = Path(output_dir)
    if resume is not None:
        if overwrite:
            raise ConfigError(
                "--overwrite_output_dir true and --resume_from_checkpoint contradict each other: "
                "overwriting would delete the checkpoint to resume; drop one of them."
            )
        checkpoint = Path(resume)
        recorded = recorded_settings(checkpoint) or {}
        diffs = settings_differences(recorded, requested, checkpoint.name)
        if diffs:
            raise ConfigError(
                f"--resume_from_checkpoint {checkpoint}: {'; '.join(diffs)}. Resume with the checkpoint's settings, "
                f"or start a new run in another --output_dir (or with --overwrite_output_dir true)."
            )
        return
    files = previous_run_files(out)
    if not files:
        return
    if overwrite:
        return  # removed by remove_previous_run once the new run has passed its own checks
    diffs: list[str] = []
    for folder in [out] + [p for p in files if p.is_dir()]:
        diffs += settings_differences(recorded_settings(folder) or {}, requested, _where(folder, out))
    checkpoints = [p.name for p in files if p.is_dir()]
    held = ["adapter" if (out / RUN_FILES[0]).is_file() else "files"]
    if checkpoints:
        held.append(f"checkpoints ({', '.join(checkpoints[:3])}{', ...' if len(checkpoints) > 3 else ''})")
    held_text = " and ".join(held)
    why = (
        f"another run's {held_text}, with other settings: {'; '.join(diffs[:4])}"
        if diffs
        else f"an earlier run's {held_text}, with the same settings"
    )
    resume_hint_text = " continue it with --resume_from_checkpoint true," if checkpoints and not diffs else ""
    raise ConfigError(
        f"--output_dir {out} holds {why}. A new run there would mix with it:{resume_hint_text} choose another "
        f"--output_dir, or pass --overwrite_output_dir true to delete that run's adapter and checkpoints."
    )


def remove_previous_run(output_dir: str | os.PathLike) -> list[Path]:
    """Delete a previous run's checkpoints and top-level run files (``--overwrite_output_dir``).

    Other files in the folder (notes, logs of other tools) are kept. Returns what was removed.
    """
    removed = previous_run_files(output_dir)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if removed:
        logger.info(
            "--overwrite_output_dir: removed the previous run's %s from %s",
            ", ".join(p.name for p in removed),
            output_dir,
        )
    return removed


def resume_hint(output_dir: str | os.PathLike) -> str:
    """How to continue an interrupted run in ``output_dir``: the flag, and the checkpoint it would use."""
    from cnclip_lora.utils.files import latest_complete_checkpoint

    latest, _ = latest_complete_checkpoint(output_dir)
    if latest is None:
        return (
            "no checkpoint was saved yet (see --save_strategy/--save_steps), so nothing can be resumed: "
            "run the same command again to start over."
        )
    return (
        f"to continue from {latest}, run the same command again with --resume_from_checkpoint true "
        f"(and without --overwrite_output_dir); it picks the newest complete checkpoint in {output_dir}."
    )
