"""Integrity and completeness of a LoRA adapter folder, checked before peft loads it.

peft loads what it can and only warns about the rest: a tensor missing from
``adapter_model.safetensors`` leaves that module's LoRA at its initial value (B = 0, so it does
nothing), an adapter for a larger base fails deep in ``load_state_dict`` with a shape dump, and
a damaged file or config surfaces as a library traceback. :func:`validate_adapter_folder` turns
each of these into one message naming the file and what is wrong, before any embedding.
(Whether the adapter was trained on *this* base checkpoint is a separate identity check.)
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from cnclip_lora.errors import CnClipLoraError, UnsafeArtifactError
from cnclip_lora.options import tower_of
from cnclip_lora.utils.files import pickled_files

__all__ = ["AdapterError", "validate_adapter_folder"]

from cnclip_lora.adapter import CONFIG_FILE, WEIGHTS_FILE

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


#: What to do with pickled weights (shared by the adapter and model checks).
CONVERT_HINT = (
    "Only safetensors adapters are accepted. If you trust the file, convert it once: load the state dict with "
    "torch.load(path, weights_only=True) and save it with safetensors.torch.save_file(state_dict, "
    "'adapter_model.safetensors'), or reload the adapter with peft and call save_pretrained (safetensors by default)."
)


def check_adapter_dir(path: str | os.PathLike, *, source: str | None = None) -> Path:
    """Check that ``path`` holds a safetensors LoRA adapter (and no pickle-only one).

    Args:
        path: Folder to check.
        source: How the user named it (a Hub id, say), for the error messages.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        UnsafeArtifactError: The adapter exists only in a pickled format.
        CnClipLoraError: The folder or its ``adapter_config.json`` / weights are missing.
    """
    folder = Path(path)
    name = source or str(folder)
    if not folder.is_dir():
        raise CnClipLoraError(f"Adapter directory {name!r} does not exist or is not a directory.")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = pickled_files(folder)
        if pickles:
            raise UnsafeArtifactError(
                f"Adapter {name!r} has no adapter_model.safetensors, only pickled weights ({', '.join(pickles)}), "
                f"which can execute code when loaded. {CONVERT_HINT}"
            )
        raise CnClipLoraError(
            f"Adapter {name!r} has no adapter_model.safetensors: point to the folder a "
            "training run saved its adapter in."
        )
    if not (folder / CONFIG_FILE).is_file():
        raise CnClipLoraError(f"Adapter {name!r} has no adapter_config.json, so peft cannot rebuild it.")
    return folder


class AdapterError(CnClipLoraError):
    """An adapter folder that is damaged, made for another model, or incomplete."""


def _read_config(folder: Path) -> Any:
    """The adapter's LoraConfig, or AdapterError naming the file, line and column."""
    from peft import LoraConfig

    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AdapterError(f"{path}: not UTF-8 text; the adapter folder is damaged (copy it again).") from None
    except json.JSONDecodeError as err:
        raise AdapterError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); the file is damaged or "
            "was edited by hand: restore it from the training output folder."
        ) from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object with the LoRA settings, found {type(raw).__name__}.")
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; this package loads LoRA adapters only.")
    try:
        return LoraConfig.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - peft raises TypeError/ValueError/KeyError for bad settings
        raise AdapterError(f"{path}: peft cannot read these LoRA settings ({type(err).__name__}: {err}).") from None


def _read_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header; AdapterError when the file is damaged."""
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(
            f"{path}: not a readable safetensors file ({err}); it is truncated or damaged (an interrupted copy or "
            "download?): copy the adapter folder again."
        ) from None


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def validate_adapter_folder(adapter_dir: str | Path, base_model: nn.Module) -> dict[str, int]:
    """Check that ``adapter_dir`` holds a complete LoRA adapter that fits ``base_model``.

    Checked: ``adapter_config.json`` is valid JSON that peft reads; ``adapter_model.safetensors``
    is a complete safetensors file; its target modules exist in the base (as layers peft adapts);
    every tensor peft expects (``lora_A`` and ``lora_B`` of every targeted module) is present,
    with shapes that match the base's layers (an adapter for a base of another size fails here);
    no tensor names a module the base lacks; and, when the folder's ``cnclip_lora.json`` records
    how many modules of each tower were adapted, the file holds exactly those on both towers.

    Args:
        adapter_dir: The local adapter folder.
        base_model: The loaded base model, before peft wraps it.

    Returns:
        Adapted modules per tower found in the file, e.g. ``{"text": 6, "vision": 6}``.

    Raises:
        AdapterError: Naming the file and what is wrong.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    folder = check_adapter_dir(adapter_dir)
    config = _read_config(folder)
    shapes = _read_shapes(folder)
    weights = folder / WEIGHTS_FILE
    modules = dict(base_model.named_modules())

    targeted = [name for name in modules if name and check_target_module_exists(config, name)]
    if not targeted:
        raise AdapterError(
            f"{folder / CONFIG_FILE}: target_modules {config.target_modules!r} match no module of the base model; "
            "the adapter was made for another architecture, or the config was edited."
        )
    from torch import nn

    not_linear = [n for n in targeted if not isinstance(modules[n], nn.Linear)]
    if not_linear:
        raise AdapterError(
            f"{folder / CONFIG_FILE}: target_modules name layers that are not Linear in the base model "
            f"({_examples(not_linear)}); the adapter does not fit this base."
        )

    found: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match:
            found.setdefault(match["module"], {})[match["part"]] = shape
    unknown = sorted(m for m in found if m not in modules)
    if unknown:
        raise AdapterError(
            f"{weights}: holds LoRA weights for {len(unknown)} module(s) the base model does not have "
            f"({_examples(unknown)}); the adapter was made for another model."
        )
    untargeted = sorted(m for m in found if m not in set(targeted))
    if untargeted:
        raise AdapterError(
            f"{weights}: holds LoRA weights for module(s) its adapter_config.json does not target "
            f"({_examples(untargeted)}); the config and the weights come from different adapters."
        )
    missing = [f"{n}.lora_{p}.weight" for n in targeted for p in "AB" if p not in found.get(n, {})]
    if missing:
        per_tower = Counter(tower_of(m) for m in missing)
        towers = ", ".join(f"{count} on the {tower} tower" for tower, count in sorted(per_tower.items()))
        raise AdapterError(
            f"{weights}: {len(missing)} LoRA tensor(s) that adapter_config.json calls for are missing ({towers}; "
            f"e.g. {_examples(missing)}); peft would leave those layers un-adapted. The file is incomplete: "
            "copy the adapter folder again or retrain."
        )
    for name in targeted:
        layer, a_shape, b_shape = modules[name], found[name]["A"], found[name]["B"]
        fits = (
            len(a_shape) == 2
            and len(b_shape) == 2
            and a_shape[1] == layer.in_features
            and b_shape[0] == layer.out_features
            and a_shape[0] == b_shape[1]
        )
        if not fits:
            raise AdapterError(
                f"{weights}: {name} has LoRA shapes A{a_shape} B{b_shape}, but the base layer is "
                f"{layer.in_features} -> {layer.out_features}; the adapter was made for a base model of another size."
            )

    counts = dict(Counter(tower_of(n) for n in targeted))
    _check_recorded_towers(folder, counts)
    return counts


def _check_recorded_towers(folder: Path, counts: dict[str, int]) -> None:
    """The per-tower module counts training recorded must be what the file holds."""
    from cnclip_lora.adapter.record import RECORD_FILE, RunRecord

    record = RunRecord.load(folder)
    recorded = record.lora.adapted_modules if record is not None and record.lora is not None else None
    if not isinstance(recorded, dict):
        return
    for tower in ("text", "vision"):
        want, have = recorded.get(tower), counts.get(tower, 0)
        if isinstance(want, int) and want != have:
            raise AdapterError(
                f"{folder / WEIGHTS_FILE}: training recorded {want} adapted {tower}-tower module(s) in "
                f"{RECORD_FILE}, but the adapter holds {have}; the folder mixes files of different runs or "
                "is incomplete."
            )
