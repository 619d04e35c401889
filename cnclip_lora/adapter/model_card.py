"""Model card (README.md) for a trained adapter folder.

The card is generated from what the folder actually holds, never from what a run
intended: LoRA modules are counted from the saved weights (a misspelt target shows
up as a tower with no adapter), metrics come from the Trainer's result files with
the gallery size they were measured against, and a run without metrics says so.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cnclip_lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from cnclip_lora.adapter.record import DataSummary, RunRecord
from cnclip_lora.errors import CnClipLoraError
from cnclip_lora.options import TOWERS, tower_of
from cnclip_lora.utils.files import atomic_write_text

__all__ = [
    "CARD_TAGS",
    "PIPELINE_TAG",
    "build_model_card",
    "read_metrics",
    "retrieval_metrics",
    "summarize_lora_weights",
    "write_model_card",
]

CARD_TAGS = ("chinese-clip", "lora", "peft", "text-to-image-retrieval", "cnclip-lora")

# The Hub has no retrieval pipeline tag ("text-to-image" means image generation), and the card shows
# retrieval, not classification: no pipeline tag rather than one whose widget the card never explains.
PIPELINE_TAG = None

_METRIC_FILES = ("train_results.json", "eval_results.json", "all_results.json")
_DIRECTIONS = {"t2i": "text-to-image", "i2t": "image-to-text"}
_RECALLS = ("R@1", "R@5", "R@10", "MR")
_SPLIT_NAMES = {"eval": "validation", "test": "test", "predict": "test"}
_PLACEHOLDER_REPO = "<user>/<adapter-repo>"


def _read_json(path: Path) -> dict[str, Any] | None:
    """Parse a JSON object file; ``None`` when absent, a named error when unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CnClipLoraError(f"Cannot read {path}: {err}. Fix or delete the file and retry.") from err
    if not isinstance(data, dict):
        raise CnClipLoraError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def read_metrics(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Merge the Trainer's metric files of ``output_dir`` (later files win).

    ``all_results.json`` is the union the Trainer writes last, so it overrides
    ``eval_results.json``/``train_results.json`` where both hold a key.

    Args:
        output_dir: A training output directory.

    Returns:
        A flat ``{name: value}`` dict, empty when no metric file exists.
    """
    merged: dict[str, Any] = {}
    for name in _METRIC_FILES:
        merged.update(_read_json(Path(output_dir) / name) or {})
    return merged


def retrieval_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group flat ``{prefix}_{t2i|i2t}_{R@K|MR}`` metrics by prefix and direction.

    Args:
        metrics: Flat metrics as written by the Trainer (e.g. ``eval_t2i_R@1``).

    Returns:
        ``{prefix: {"t2i": {"R@1": v, ...}, "i2t": {...}, "gallery_size": n | None}}``;
        prefixes without any recall metric are left out.
    """
    groups: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        prefix, sep, rest = key.partition("_")
        direction, sep2, name = rest.partition("_")
        if not (sep and sep2) or direction not in _DIRECTIONS or name not in _RECALLS:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        groups.setdefault(prefix, {}).setdefault(direction, {})[name] = value
    for prefix, group in groups.items():
        size = metrics.get(f"{prefix}_gallery_size")
        group["gallery_size"] = int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None
    return groups


def summarize_lora_weights(adapter_file: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Count the LoRA-adapted modules and parameters per tower in a saved adapter.

    Reads only the safetensors header (names and shapes), so it is cheap for any
    model size and shows what really landed, whatever the config asked for.

    Args:
        adapter_file: Path to ``adapter_model.safetensors``.

    Returns:
        ``{"text" | "vision" | "other": {"modules": int, "parameters": int,
        "targets": Counter(target name -> module count)}}``; towers are always present.
    """
    from safetensors import safe_open

    towers: dict[str, dict[str, Any]] = {
        tower: {"modules": 0, "parameters": 0, "targets": Counter()} for tower in (*TOWERS, "other")
    }
    modules: dict[str, str] = {}
    try:
        # framework="numpy" reads shapes of any dtype (bf16 included) without importing torch.
        with safe_open(str(adapter_file), framework="numpy") as handle:
            for key in handle.keys():
                module, is_lora, _ = key.partition(".lora_")
                module = module.removeprefix("base_model.model.")
                tower = tower_of(module)
                towers[tower]["parameters"] += math.prod(handle.get_slice(key).get_shape())
                if is_lora:
                    modules[module] = tower
    except (OSError, RuntimeError, ValueError) as err:  # safetensors raises SafetensorError (an Exception)
        raise CnClipLoraError(f"Cannot read the adapter weights {adapter_file}: {err}") from err
    for module, tower in modules.items():
        towers[tower]["modules"] += 1
        towers[tower]["targets"][module.rsplit(".", 1)[-1]] += 1
    return towers


def _is_hub_id(name: str | None) -> bool:
    """A Hub model id (not a local path), i.e. something others can download."""
    if not name or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _fmt(value: Any) -> str:
    """Four decimals at most, without trailing zeros: metrics are shown as recorded."""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _lora_section(adapter_config: dict[str, Any], weights: dict[str, dict[str, Any]] | None) -> list[str]:
    r, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    targets = adapter_config.get("target_modules")
    if isinstance(targets, (list, tuple)):
        targets = ", ".join(f"`{t}`" for t in sorted(targets))
    elif targets:
        targets = f"regex `{targets}`"
    lines = [
        "## LoRA configuration",
        "",
        f"- rank `r`: {r}, `lora_alpha`: {alpha}"
        + (
            f" (scale alpha/r = {alpha / r:g})" if isinstance(r, int) and r and isinstance(alpha, (int, float)) else ""
        ),
        f"- dropout: {adapter_config.get('lora_dropout', 'n/a')}",
        f"- requested target modules: {targets or 'n/a'}",
    ]
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            lines.append(f"- per-module `{key}`: `{json.dumps(adapter_config[key], sort_keys=True)}`")
    if weights is None:
        return lines + ["", "The adapter weights file is missing: no per-tower summary."]
    lines += [
        "",
        "Adapted modules counted from `adapter_model.safetensors`:",
        "",
        "| tower | adapted modules | per target | LoRA parameters |",
        "| --- | ---: | --- | ---: |",
    ]
    for tower, info in weights.items():
        if tower == "other" and not info["parameters"]:
            continue
        per_target = ", ".join(f"`{name}` × {count}" for name, count in sorted(info["targets"].items())) or "none"
        lines.append(f"| {tower} | {info['modules']} | {per_target} | {info['parameters']:,} |")
    frozen = [tower for tower in TOWERS if not weights[tower]["modules"]]
    if frozen:
        lines += ["", f"No LoRA module in the {' and '.join(frozen)} tower: it is the unchanged base tower."]
    return lines


def _preprocessing_section(record: RunRecord | None) -> list[str]:
    if record is None:
        return ["## Preprocessing", "", "No preprocessing record (`cnclip_lora.json`) in this folder."]
    pre = record.preprocessing
    return [
        "## Preprocessing",
        "",
        f"- titles prepared `{pre.title_normalization}`, tokenised with `max_length={pre.max_length}` "
        "(truncated and padded)",
        f"- training images: flip rule `{pre.train_flip}`",
        f"- retrieval images (gallery): {'flipped left-right' if pre.inference_flip else 'not flipped'}",
        f"- EXIF orientation applied before resizing: {pre.exif_transpose}",
        f"- JPEG draft (reduced-scale) decoding: {pre.draft}",
        "",
        "Embed galleries with the same rule as in training: `RetrievalModel` replays it in `encode_images`.",
    ]


#: The training settings a card states, as ``training_args.json`` names them.
_RECIPE = (
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "schedule"),
    ("warmup_steps", "warm-up steps"),
    ("warmup_ratio", "warm-up ratio"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps (-1: the epochs decide)"),
    ("per_device_train_batch_size", "batch per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("contrastive_mini_batch_size", "contrastive mini-batch (cached gradients)"),
    ("weight_decay", "weight decay"),
    ("seed", "seed"),
    ("bf16", "bf16"),
)


def _recipe_section(args: dict[str, Any] | None) -> list[str]:
    """The training recipe from ``training_args.json``, so the run can be repeated from the card."""
    if not args:
        return ["## Training recipe", "", "No `training_args.json` in this folder."]
    lines = ["## Training recipe", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {label} | `{_fmt(args[key])}` |" for key, label in _RECIPE if key in args]
    return lines + ["", "The flip rule and the LoRA settings are in the sections above and below."]


def _data_section(data: DataSummary | None, description: str | None) -> list[str]:
    lines = ["## Training data", ""]
    lines.append(
        description
        or "Chinese product titles paired with product photos, in the iFLYTEK 2024 image-text retrieval"
        " layout (`train.csv` + `image/`)."
    )
    if data is not None:
        # Only the folder name: a full local path says nothing to readers and leaks a home layout.
        data_dir = Path(str(data.data_dir or "")).name or "n/a"
        shown = {
            k: "n/a" if v is None else v
            for k, v in (("n_train", data.n_train), ("n_val", data.n_val), ("gallery", data.val_gallery_size))
        }
        lines += [
            "",
            f"- data folder: `{data_dir}`",
            f"- training pairs: {shown['n_train']}",
            f"- validation queries (held out from training): {shown['n_val']}",
            f"- validation gallery: {shown['gallery']} images",
        ]
    return lines


def _evaluation_section(groups: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not groups:
        lines.append(
            "Not evaluated: this folder holds no retrieval metrics (`all_results.json` /"
            " `eval_results.json`), so no recall is reported."
        )
    for prefix, group in sorted(groups.items()):
        split = _SPLIT_NAMES.get(prefix, prefix)
        size = group["gallery_size"]
        gallery = f"a gallery of {size} images" if size else "a gallery of unrecorded size"
        lines += [
            f"Split `{split}` (metrics `{prefix}_*`): each query ranked against {gallery}.",
            "",
            "| direction | R@1 | R@5 | R@10 | MR | gallery size |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for direction, label in _DIRECTIONS.items():
            if direction in group:
                cells = " | ".join(_fmt(group[direction].get(k, "–")) for k in _RECALLS)
                lines.append(f"| {label} | {cells} | {size or 'n/a'} |")
        lines.append("")
    if groups:
        lines.append(
            "MR is the mean of R@1, R@5 and R@10. Recall falls as the gallery grows: "
            "compare runs only at equal gallery size."
        )
    if "train_loss" in metrics:
        lines += ["", f"Final training loss: {_fmt(metrics['train_loss'])}."]
    return lines


def _usage_section(base: str, repo: str, has_processor: bool, flip: bool) -> list[str]:
    processor_src = repo if has_processor else base
    flip_note = ["# as in training: mirror gallery images left-right (PIL.ImageOps.mirror) before `processor`"]
    return [
        "## Usage",
        "",
        "With cnclip-lora (applies the recorded preprocessing, including the flip rule):",
        "",
        "```python",
        "from cnclip_lora import RetrievalModel",
        "",
        f'model = RetrievalModel.from_pretrained("{base}", adapter="{repo}")',
        'scores = model.encode_texts(["商品标题"]) @ model.encode_images(["image.jpg"]).T',
        "```",
        "",
        "With plain transformers + peft:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import ChineseCLIPModel, ChineseCLIPProcessor",
        "",
        f'base = ChineseCLIPModel.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo}").merge_and_unload().eval()',
        f'processor = ChineseCLIPProcessor.from_pretrained("{processor_src}")',
        *(flip_note if flip else []),
        "```",
    ]


def build_model_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    dataset_description: str | None = None,
) -> str:
    """Render the README.md (YAML metadata + body) of a trained adapter folder.

    Args:
        output_dir: The training output directory (adapter, processor, records, metrics).
        repo_id: Hub id the card will live under; used in the usage snippet and as the
            model-index name. Without it the snippet shows a placeholder.
        license: License id for the metadata; left out when not given (no guessing).
        dataset_description: One paragraph on the training data; a generic line otherwise.

    Returns:
        The card as text, metadata validated by ``huggingface_hub.ModelCard``.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise CnClipLoraError(f"Output directory {folder} does not exist or is not a directory.")
    adapter_config = _read_json(folder / CONFIG_FILE) or {}
    record = RunRecord.load(folder)
    data = record.data if record is not None else None
    metrics = read_metrics(folder)
    groups = retrieval_metrics(metrics)
    val_gallery = data.val_gallery_size if data is not None else None
    if "eval" in groups and groups["eval"]["gallery_size"] is None and isinstance(val_gallery, int):
        groups["eval"]["gallery_size"] = val_gallery  # metrics without the size: the run's record has it
    weights_file = folder / WEIGHTS_FILE
    weights = summarize_lora_weights(weights_file) if weights_file.is_file() else None

    # A run may record a local copy of a Hub model in one place and its Hub id in the other: prefer the id.
    recorded_base = record.base_model if record is not None else None
    candidates = [b for b in (adapter_config.get("base_model_name_or_path"), recorded_base) if b]
    base = next((b for b in candidates if _is_hub_id(b)), candidates[0] if candidates else None)
    base_on_hub = _is_hub_id(base)
    base_label = base if base_on_hub else (Path(base).name if base else "unknown")
    model_name = (repo_id or folder.resolve().name).rsplit("/", 1)[-1]
    shown_base = base if base_on_hub else "<base Chinese-CLIP model>"

    eval_results = []
    for prefix, group in sorted(groups.items()):
        for direction, task in (("t2i", "text-to-image-retrieval"), ("i2t", "image-to-text-retrieval")):
            for name, value in group.get(direction, {}).items():
                eval_results.append(
                    EvalResult(
                        task_type=task,
                        task_name=f"{_DIRECTIONS[direction]} retrieval",
                        dataset_type="cnclip-lora-retrieval",
                        dataset_name=f"{_SPLIT_NAMES.get(prefix, prefix)} split of the training data",
                        dataset_split=_SPLIT_NAMES.get(prefix, prefix),
                        dataset_args={"gallery_size": group["gallery_size"]} if group["gallery_size"] else None,
                        metric_type="mean_recall" if name == "MR" else f"recall@{name[2:]}",
                        metric_name=f"{direction} {name}",
                        metric_value=value,
                    )
                )
    card_data = ModelCardData(
        base_model=base if base_on_hub else None,  # the Hub accepts only Hub ids here
        library_name="peft",
        license=license,
        language="zh",
        pipeline_tag=PIPELINE_TAG,
        tags=list(CARD_TAGS),
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    base_line = (
        f"[`{base}`](https://huggingface.co/{base})"
        if base_on_hub
        else f"a local checkpoint `{base_label}` (not on the Hub; load your copy of it)"
    )
    body = [
        f"# {model_name}",
        "",
        f"A LoRA adapter for Chinese-CLIP, trained with cnclip-lora for Chinese text-to-image retrieval."
        f" Base model: {base_line}. Only the adapter is stored here; the base weights are not.",
        "",
        *_lora_section(adapter_config, weights),
        "",
        *_preprocessing_section(record),
        "",
        *_recipe_section(_read_json(folder / "training_args.json")),
        "",
        *_data_section(data, dataset_description),
        "",
        *_evaluation_section(groups, metrics),
        "",
        *_usage_section(
            shown_base,
            repo_id or _PLACEHOLDER_REPO,
            any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")),
            record is not None and record.preprocessing.inference_flip,
        ),
        "",
    ]
    if adapter_config.get("peft_version"):
        body += [f"Saved with peft {adapter_config['peft_version']}.", ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body)
    return str(ModelCard(content))


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`build_model_card` output to ``output_dir/README.md`` atomically.

    Args:
        output_dir: The training output directory.
        **kwargs: Passed to :func:`build_model_card` (``repo_id``, ``license``, ``dataset_description``).

    Returns:
        The path of the written README.md.
    """
    text = build_model_card(output_dir, **kwargs)
    path = Path(output_dir) / "README.md"
    atomic_write_text(path, text)
    return path
