"""Which base model an adapter was trained on, recorded with it and checked wherever it is loaded.

LoRA weights are deltas on one particular base: on another base (other weights, another image
size, another vocabulary) they load without complaint and give wrong rankings. Training records
the base's identity in ``cnclip_lora.json``; :func:`check_base_identity` compares it with the
loaded base in the one adapter-loading path (:meth:`cnclip_lora.inference.model.RetrievalModel.from_pretrained`,
used by ``retrieve``, ``evaluate`` and adapters from the Hub).

The identity is cheap to compute for any model size: the architecture fields of the config, a
hash of the tokenizer's vocabulary, and a weights fingerprint of a few fixed tensors (shape plus
evenly spaced sampled values, compared with a tolerance so loading the same base in bfloat16 or
float16 still matches), and the Hub commit when the base came from the Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cnclip_lora.errors import ConfigError

__all__ = ["base_identity", "check_base_identity", "recorded_base_identity"]

logger = logging.getLogger(__name__)

_ARCH_FIELDS = {
    "text": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ),
    "vision": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "image_size",
        "patch_size",
    ),
}
# Fixed tensors present in every Chinese-CLIP model: both towers' input embeddings and both projections.
_FINGERPRINT_TENSORS = (
    "text_model.embeddings.word_embeddings.weight",
    "vision_model.embeddings.patch_embedding.weight",
    "text_projection.weight",
    "visual_projection.weight",
    "logit_scale",
)
_SAMPLES_PER_TENSOR = 32
# bfloat16 keeps ~3 significant digits; different weights differ far more than this.
_REL_TOL = 2e-2


def _architecture(config: Any) -> dict[str, Any]:
    arch: dict[str, Any] = {
        "model_type": getattr(config, "model_type", None),
        "projection_dim": getattr(config, "projection_dim", None),
    }
    for tower, fields in _ARCH_FIELDS.items():
        sub = getattr(config, f"{tower}_config", None)
        for name in fields:
            arch[f"{tower}.{name}"] = getattr(sub, name, None) if sub is not None else None
    return arch


def _vocab_hash(tokenizer: Any) -> str | None:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def _weights_fingerprint(model: Any) -> dict[str, Any]:
    import torch

    params = dict(model.named_parameters())
    out: dict[str, Any] = {}
    for name in _FINGERPRINT_TENSORS:
        tensor = params.get(name)
        if tensor is None:
            continue
        with torch.no_grad():
            flat = tensor.detach().reshape(-1)
            n = flat.numel()
            idx = torch.linspace(0, n - 1, steps=min(_SAMPLES_PER_TENSOR, n)).round().long().to(flat.device)
            values = flat[idx].float().cpu().tolist()
        out[name] = {"shape": list(tensor.shape), "values": [round(v, 6) for v in values]}
    return out


def base_identity(model: Any, tokenizer: Any, model_name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """The identity of a loaded base model (call it before LoRA is applied or merged).

    Args:
        model: the base ``ChineseCLIPModel``.
        tokenizer: its tokenizer (the vocabulary decides which token id means what).
        model_name_or_path: how it was named (recorded for messages only).
        revision: the Hub revision asked for.
    """
    config = getattr(model, "config", None)
    local = Path(os.fspath(model_name_or_path)).is_dir()
    return {
        "name": str(model_name_or_path),
        "revision": revision,
        "hub_commit": None if local else getattr(config, "_commit_hash", None),
        "architecture": _architecture(config),
        "vocab_sha256": _vocab_hash(tokenizer),
        "weights": _weights_fingerprint(model),
    }


def recorded_base_identity(adapter_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The identity recorded with an adapter; ``None`` for an adapter without one (older runs).

    Raises:
        cnclip_lora.adapter.record.RecordError: the adapter's record is damaged.
    """
    from cnclip_lora.adapter.record import RunRecord

    record = RunRecord.load(adapter_dir)
    return record.base_identity if record is not None else None


def _describe(arch: dict[str, Any]) -> str:
    return (
        f"text {arch.get('text.num_hidden_layers')}x{arch.get('text.hidden_size')}, vision "
        f"{arch.get('vision.num_hidden_layers')}x{arch.get('vision.hidden_size')} at "
        f"{arch.get('vision.image_size')}px, embed {arch.get('projection_dim')}"
    )


def _weights_differ(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first fingerprinted tensor that differs, or ``None`` when all agree."""
    for name in sorted(set(recorded) | set(current)):
        a, b = recorded.get(name), current.get(name)
        if a is None or b is None or a.get("shape") != b.get("shape"):
            return name
        for x, y in zip(a.get("values", []), b.get("values", [])):
            if not math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=1e-3 * max(abs(x), abs(y), 1e-3)):
                return name
    return None


def check_base_identity(
    recorded: dict[str, Any] | None,
    current: dict[str, Any],
    *,
    adapter: str,
    allow_different_base: bool = False,
) -> None:
    """Refuse an adapter on a base it was not trained on.

    * no record (an adapter from before identities were recorded): a warning;
    * a different architecture: always an error naming both (the adapter cannot mean anything there);
    * the same architecture with other weights or another vocabulary: an error unless
      ``allow_different_base`` (e.g. the base was re-saved or converted with tiny numeric changes,
      or an adapter is deliberately tried on a further fine-tuned copy of its base).

    Raises:
        ConfigError: the adapter does not belong to this base.
    """
    base = current.get("name")
    if recorded is None:
        logger.warning(
            "adapter %s records no base model identity (trained by an older version): cannot check "
            "that it belongs to %s; results are wrong if it was trained on another base.",
            adapter,
            base,
        )
        return
    trained_on = recorded.get("name")
    arch_a, arch_b = recorded.get("architecture") or {}, current.get("architecture") or {}
    diffs = [k for k in sorted(set(arch_a) | set(arch_b)) if arch_a.get(k) != arch_b.get(k)]
    if diffs:
        detail = ", ".join(f"{k} {arch_a.get(k)} vs {arch_b.get(k)}" for k in diffs[:4])
        raise ConfigError(
            f"adapter {adapter} was trained on {trained_on!r} ({_describe(arch_a)}), but the base loaded is "
            f"{base!r} ({_describe(arch_b)}): a different architecture ({detail}). Pass the base it was "
            f"trained on as --model_name_or_path."
        )
    problems = []
    if (
        recorded.get("vocab_sha256")
        and current.get("vocab_sha256")
        and recorded["vocab_sha256"] != current["vocab_sha256"]
    ):
        problems.append("another tokenizer vocabulary")
    tensor = _weights_differ(recorded.get("weights") or {}, current.get("weights") or {})
    if tensor is not None:
        problems.append(f"other weights ({tensor} differs)")
    commit_a, commit_b = recorded.get("hub_commit"), current.get("hub_commit")
    if not problems and commit_a and commit_b and commit_a != commit_b:
        logger.info(
            "adapter %s: base %s is at Hub commit %s, trained at %s; the weights match.",
            adapter,
            base,
            commit_b,
            commit_a,
        )
    if not problems:
        return
    what = " and ".join(problems)
    if allow_different_base:
        logger.warning(
            "adapter %s was trained on %r; the base loaded, %r, has the same architecture but %s "
            "(--allow_different_base).",
            adapter,
            trained_on,
            base,
            what,
        )
        return
    raise ConfigError(
        f"adapter {adapter} was trained on {trained_on!r}; the base loaded, {base!r}, has the same architecture "
        f"but {what}, so its rankings would be silently wrong. Pass the base it was trained on as "
        f"--model_name_or_path, or --allow_different_base true if this is deliberate (e.g. a re-saved or "
        f"converted copy of that base)."
    )
