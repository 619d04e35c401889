"""Load Chinese-CLIP safely, put LoRA on it, and check that LoRA landed where asked.

The seed solution meant to adapt both towers but misspelled the vision targets
(``vision_model.emcoder...``); PEFT silently drops a target that matches nothing as
long as another one matched, so only the text tower was ever trained. `apply_lora`
therefore resolves every requested target to real ``nn.Linear`` modules *before*
wrapping and verifies the result per tower afterwards.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    ChineseCLIPConfig,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
)

from cnclip_lora.errors import ConfigError, UnsafeArtifactError
from cnclip_lora.options import TOWERS, parse_targets, tower_of
from cnclip_lora.utils.files import is_pickle, pickled_files
from cnclip_lora.utils.sources import check_source

__all__ = [
    "load_model_and_processor",
    "h14_config",
    "default_lora_targets",
    "resolve_lora_targets",
    "apply_lora",
    "count_lora_modules",
    "trainable_parameters_by_tower",
    "get_text_embeds",
    "get_image_embeds",
]

logger = logging.getLogger(__name__)

_CONVERT_HINT = (
    "Convert it once, in an environment you trust: "
    "`ChineseCLIPModel.from_pretrained(src, use_safetensors=False).save_pretrained(dst)` writes "
    "model.safetensors (for a Hub repo, a safetensors conversion PR can be used via --revision)."
)


def _refuse_pickled_weights(path: Path) -> None:
    """Raise if a local checkpoint offers only pickle-based weights."""
    if path.is_file():
        if is_pickle(path):
            raise UnsafeArtifactError(
                f"refusing to load {str(path)!r}: pickled weights can execute code when loaded. {_CONVERT_HINT}"
            )
        raise ConfigError(f"model path {str(path)!r} is a file; pass the checkpoint folder or a Hub model id")
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickled = pickled_files(path)
    if pickled:
        raise UnsafeArtifactError(
            f"checkpoint folder {str(path)!r} has only pickled weights ({', '.join(pickled)}) and no "
            f"*.safetensors file; pickled weights can execute code when loaded, so they are never read. "
            f"{_CONVERT_HINT}"
        )


def load_model_and_processor(
    model_name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[ChineseCLIPModel, ChineseCLIPProcessor]:
    """Load a Chinese-CLIP model (safetensors only) and the processor saved beside it.

    The processor always comes from the checkpoint: the image processor's class
    defaults (shortest-edge resize + centre crop) differ from what the released
    checkpoints were trained with (squash resize, no crop).

    Args:
        model_name_or_path: Local folder or Hub model id.
        dtype: Weights dtype (``torch.float16``, ``"bfloat16"``, ``"auto"``); None keeps float32.
        attn_implementation: e.g. ``"sdpa"`` or ``"eager"``; None lets transformers choose.
        trust_remote_code: Allow code from the checkpoint; only passed on when True.
        revision: Hub branch, tag or commit.

    Raises:
        UnsafeArtifactError: The checkpoint has only pickle-based weights.
        ConfigError: The checkpoint is not a Chinese-CLIP model.
    """
    hub = check_source(os.fspath(model_name_or_path), option="--model_name_or_path", revision=revision)
    _refuse_pickled_weights(Path(os.fspath(model_name_or_path)))
    common: dict = {"revision": revision, **(hub.kwargs() if hub else {})}
    if trust_remote_code:
        common["trust_remote_code"] = True
    config = AutoConfig.from_pretrained(model_name_or_path, **common)
    if not isinstance(config, ChineseCLIPConfig) and not trust_remote_code:
        raise ConfigError(
            f"{model_name_or_path!r} is a {getattr(config, 'model_type', '?')!r} model, not 'chinese_clip'; "
            "pass a Chinese-CLIP checkpoint such as OFA-Sys/chinese-clip-vit-base-patch16"
        )
    model_kwargs = dict(common, config=config, use_safetensors=True)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    model_cls = AutoModel if trust_remote_code else ChineseCLIPModel
    try:
        model = model_cls.from_pretrained(model_name_or_path, **model_kwargs)
    except OSError as err:
        # A Hub repo (no local folder to inspect) without safetensors weights ends up here;
        # a local folder was already checked, so its errors (e.g. no weights at all) pass through.
        if not Path(os.fspath(model_name_or_path)).is_dir() and "safetensors" in str(err):
            at = f" at revision {revision!r}" if revision else ""
            raise UnsafeArtifactError(
                f"{model_name_or_path!r} has no safetensors weights{at}; "
                f"pickled weights are never loaded. {_CONVERT_HINT}"
            ) from err
        raise
    processor_cls = AutoProcessor if trust_remote_code else ChineseCLIPProcessor
    processor = processor_cls.from_pretrained(model_name_or_path, **common)
    return model, pin_pil_image_processor(processor, model_name_or_path, **common)


def pin_pil_image_processor(processor: Any, model_name_or_path: str, **kwargs: Any) -> Any:
    """Use the PIL backend of the image processor on every machine.

    transformers 5 picks the torchvision backend whenever torchvision is installed (typical on GPU
    machines) and PIL otherwise (this project's CPU machines). Their resize arithmetic differs,
    so an adapter trained on one machine and used for retrieval on another would see other
    pixels: the train/test mismatch this package exists to prevent. PIL is the checkpoints'
    original implementation and the one the batched/cached path in :mod:`cnclip_lora.inputs.images`
    reproduces.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or getattr(image_processor, "backend", "pil") == "pil":
        return processor
    pil = AutoImageProcessor.from_pretrained(model_name_or_path, backend="pil", **kwargs)
    logger.info(
        "image processor: %s -> %s (identical preprocessing on every machine)",
        type(image_processor).__name__,
        type(pil).__name__,
    )
    processor.image_processor = pil
    return processor


def h14_config() -> ChineseCLIPConfig:
    """Return the configuration of ``OFA-Sys/chinese-clip-vit-huge-patch14`` (ViT-H/14).

    Used to size runs on the ``meta`` device without downloading 4 GB of weights.
    """
    text = dict(
        vocab_size=21128,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    vision = dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        intermediate_size=5120,
        patch_size=14,
        image_size=224,
        projection_dim=1024,
    )
    return ChineseCLIPConfig(
        text_config=text, vision_config=vision, projection_dim=1024, logit_scale_init_value=4.6052
    )


def default_lora_targets(config: ChineseCLIPConfig) -> list[str]:
    """Return the full names of the Q/K/V projections of every layer of both towers.

    Layer counts come from ``config`` so the list fits any model size.
    """
    text = [
        f"text_model.encoder.layer.{i}.attention.self.{proj}"
        for i in range(config.text_config.num_hidden_layers)
        for proj in ("query", "key", "value")
    ]
    vision = [
        f"vision_model.encoder.layers.{i}.self_attn.{proj}_proj"
        for i in range(config.vision_config.num_hidden_layers)
        for proj in ("q", "k", "v")
    ]
    return text + vision


def _parse_targets(targets: list[str] | str | None, config: ChineseCLIPConfig) -> list[str]:
    if targets is None:
        return default_lora_targets(config)
    entries = parse_targets(targets) or []
    if not entries:
        raise ConfigError("lora targets: the list is empty; leave it unset for Q/K/V of both towers")
    return list(dict.fromkeys(entries))


def resolve_lora_targets(model: nn.Module, targets: list[str] | str | None = None) -> list[str]:
    """Map target entries to the full names of the ``nn.Linear`` modules they select.

    An entry selects a module when it equals the module's name or is a dotted suffix of it
    (PEFT's list semantics). Every entry must select at least one ``nn.Linear``.

    Args:
        model: The (unwrapped) Chinese-CLIP model.
        targets: None (Q/K/V of both towers), a list, or a comma-separated string.

    Returns:
        Full module names in model order.

    Raises:
        ConfigError: Naming every entry that selects nothing, with the closest real names.
    """
    entries = _parse_targets(targets, model.config)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    selected: set[str] = set()
    unmatched = []
    for entry in entries:
        hits = [name for name in linear if name == entry or name.endswith("." + entry)]
        if not hits:
            unmatched.append(entry)
        selected.update(hits)
    if unmatched:
        # Suggest from both full names and leaf names, so suffix typos get a useful hint too.
        candidates = sorted(set(linear) | {name.rsplit(".", 1)[-1] for name in linear})
        described = []
        for entry in unmatched:
            close = difflib.get_close_matches(entry, candidates, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            described.append(f"{entry!r}{hint}")
        raise ConfigError(
            f"lora targets: {len(unmatched)} of {len(entries)} entries match no nn.Linear module: "
            + "; ".join(described)
            + ". An entry is a full module name or a dotted suffix such as 'q_proj' or 'query'."
        )
    return [name for name in linear if name in selected]


@contextlib.contextmanager
def quiet_peft_wrapping() -> Iterator[None]:
    """Silence the FutureWarning peft's ``PeftModel.__init__`` raises under transformers 5
    (``is_gradient_checkpointing`` is deprecated): noise a user cannot act on, on every wrap."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def apply_lora(
    model: nn.Module,
    r: int = 64,
    alpha: int = 96,
    targets: list[str] | str | None = None,
    dropout: float = 0.0,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters and verify that every requested module got one.

    Works on a model built on the ``meta`` device, to size a run without weights.

    Args:
        model: A ``ChineseCLIPModel`` (not already a ``PeftModel``).
        r: LoRA rank.
        alpha: LoRA alpha; the update is scaled by ``alpha / r``.
        targets: None (Q/K/V of both towers), a list, or a comma-separated string of full
            module names or suffixes such as ``"query,key,value,q_proj,k_proj,v_proj"``.
        dropout: Dropout on the LoRA input.

    Returns:
        The ``PeftModel``; only LoRA weights are trainable.

    Raises:
        ConfigError: A bad option, a target that matches nothing, or a tower that was
            targeted but got no adapter.
    """
    if isinstance(model, PeftModel):
        raise ConfigError("apply_lora: the model already has LoRA adapters; pass the base model")
    if not isinstance(r, int) or r <= 0:
        raise ConfigError(f"lora r must be a positive integer, got {r!r}")
    if alpha <= 0:
        raise ConfigError(f"lora alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora dropout must be in [0, 1), got {dropout!r}")
    resolved = resolve_lora_targets(model, targets)
    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=resolved, bias="none")
    # On meta there is nothing to initialise; low_cpu_mem_usage skips the (slow) init.
    on_meta = any(p.is_meta for p in model.parameters())
    with quiet_peft_wrapping():
        peft_model = get_peft_model(model, lora_config, low_cpu_mem_usage=on_meta)

    adapted = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    missing = [name for name in resolved if name not in adapted]
    counts = count_lora_modules(peft_model)
    for tower in TOWERS:
        if any(tower_of(name) == tower for name in resolved) and counts[tower] == 0:
            raise ConfigError(f"lora targets: the {tower} tower was targeted but no LoRA module was created")
    if missing:
        raise ConfigError(f"lora targets: no LoRA module was created for {', '.join(missing[:5])}")
    params = trainable_parameters_by_tower(peft_model)
    logger.info(
        "LoRA r=%d alpha=%s on %d modules (text %d, vision %d); trainable parameters: text %s, vision %s, other %s",
        r,
        alpha,
        len(adapted),
        counts["text"],
        counts["vision"],
        f"{params['text']:,}",
        f"{params['vision']:,}",
        f"{params['other']:,}",
    )
    return peft_model


def count_lora_modules(peft_model: nn.Module) -> dict[str, int]:
    """Count modules carrying LoRA adapters per tower: ``{"text": n, "vision": n}``."""
    counts = dict.fromkeys(TOWERS, 0)
    for name, module in peft_model.named_modules():
        tower = tower_of(name)
        if isinstance(module, LoraLayer) and tower in counts:
            counts[tower] += 1
    return counts


def trainable_parameters_by_tower(model: nn.Module) -> dict[str, int]:
    """Count trainable parameters per tower: ``{"text", "vision", "other"}``.

    "other" holds what sits outside both encoders: the projection heads and ``logit_scale``.
    """
    counts = dict.fromkeys((*TOWERS, "other"), 0)
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[tower_of(name)] += param.numel()
    return counts


def _features(output) -> torch.Tensor:
    # transformers 5 returns BaseModelOutputWithPooling (projection in pooler_output),
    # a tuple when return_dict is off, and older versions a bare tensor.
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output[1]


def _base(model: nn.Module) -> nn.Module:
    # LoRA layers live inside the base model, so its feature methods already use them.
    return model.get_base_model() if isinstance(model, PeftModel) else model


def get_text_embeds(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return projected, unnormalised text embeddings ``(B, projection_dim)``.

    Works for a plain, a LoRA-wrapped (``PeftModel``) and a merged model.
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    return _features(_base(model).get_text_features(**kwargs))


def get_image_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Return projected, unnormalised image embeddings ``(B, projection_dim)``.

    Works for a plain, a LoRA-wrapped (``PeftModel``) and a merged model.
    """
    return _features(_base(model).get_image_features(pixel_values=pixel_values))
