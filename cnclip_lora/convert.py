"""``cnclip-lora convert-original``: an official Chinese-CLIP checkpoint -> a Hub-layout folder.

The official training code (``cn_clip``, OFA-Sys) writes ``{"state_dict": {...}, ...}`` with plain
tensors (keys may start with ``module.``). This module maps those weights onto
``transformers.ChineseCLIPModel`` and writes what ``train``, ``retrieve`` and ``evaluate`` load:
``config.json``, ``model.safetensors``, the squash-resize ``preprocessor_config.json`` of the released
checkpoints, and the tokenizer files. cn_clip is not needed at run time: the architecture numbers of
its model configs are in :data:`VISION_MODELS` / :data:`TEXT_MODELS`, and the vocabulary comes from
``--vocab`` (or from an installed ``cn_clip`` package, which ships the same bert-base-chinese vocab).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnclip_lora.errors import ConfigError, UnsafeArtifactError

if TYPE_CHECKING:
    import torch

__all__ = [
    "VISION_MODELS",
    "TEXT_MODELS",
    "model_info_for",
    "hf_config_from_model_info",
    "convert_state_dict",
    "convert_original",
]

#: The official ``cn_clip/clip/model_configs`` vision configs (ViT ones; ResNet-50 has no HF equivalent).
VISION_MODELS: dict[str, dict[str, int]] = {
    "ViT-B-16": {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": 12,
        "vision_width": 768,
        "vision_patch_size": 16,
    },
    "ViT-B-32": {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": 12,
        "vision_width": 768,
        "vision_patch_size": 32,
    },
    "ViT-L-14": {
        "embed_dim": 768,
        "image_resolution": 224,
        "vision_layers": 24,
        "vision_width": 1024,
        "vision_patch_size": 14,
    },
    "ViT-L-14-336": {
        "embed_dim": 768,
        "image_resolution": 336,
        "vision_layers": 24,
        "vision_width": 1024,
        "vision_patch_size": 14,
    },
    "ViT-H-14": {
        "embed_dim": 1024,
        "image_resolution": 224,
        "vision_layers": 32,
        "vision_width": 1280,
        "vision_head_width": 80,
        "vision_patch_size": 14,
    },
}
_TEXT_COMMON = {
    "vocab_size": 21128,
    "text_attention_probs_dropout_prob": 0.1,
    "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.1,
    "text_initializer_range": 0.02,
    "text_max_position_embeddings": 512,
    "text_type_vocab_size": 2,
}
#: The official text configs.
TEXT_MODELS: dict[str, dict[str, Any]] = {
    "RoBERTa-wwm-ext-base-chinese": {
        **_TEXT_COMMON,
        "text_hidden_size": 768,
        "text_intermediate_size": 3072,
        "text_num_attention_heads": 12,
        "text_num_hidden_layers": 12,
    },
    "RoBERTa-wwm-ext-large-chinese": {
        **_TEXT_COMMON,
        "text_hidden_size": 1024,
        "text_intermediate_size": 4096,
        "text_num_attention_heads": 16,
        "text_num_hidden_layers": 24,
    },
    "RBT3-chinese": {
        **_TEXT_COMMON,
        "text_hidden_size": 768,
        "text_intermediate_size": 3072,
        "text_num_attention_heads": 12,
        "text_num_hidden_layers": 3,
    },
}
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def model_info_for(vision_model: str, text_model: str) -> dict[str, Any]:
    """The official merged model config (``create_model``'s ``model_info``) for two config names."""
    names = {
        "vision": (vision_model.replace("/", "-"), VISION_MODELS),
        "text": (text_model.replace("/", "-"), TEXT_MODELS),
    }
    info: dict[str, Any] = {}
    for tower, (name, table) in names.items():
        if name not in table:
            raise ConfigError(
                f"unknown {tower} model {name!r}; one of {', '.join(table)} "
                "(or give the merged config with --model_info FILE.json)"
            )
        info.update(table[name])
    return info


#: The keys of the official model-info JSON (``cn_clip/clip/model_configs``) a conversion reads, by kind.
MODEL_INFO_KEYS: dict[str, type] = {
    "embed_dim": int,
    "image_resolution": int,
    "vision_layers": int,
    "vision_width": int,
    "vision_patch_size": int,
    "vocab_size": int,
    "text_hidden_size": int,
    "text_num_hidden_layers": int,
    "text_num_attention_heads": int,
    "text_intermediate_size": int,
    "text_hidden_act": str,
    "text_hidden_dropout_prob": float,
    "text_attention_probs_dropout_prob": float,
    "text_max_position_embeddings": int,
    "text_type_vocab_size": int,
    "text_initializer_range": float,
}


def check_model_info(info: Any, source: str = "--model_info") -> None:
    """Refuse a model-info that is not the official merged JSON, naming the file and each bad key.

    Raises:
        ConfigError: not a JSON object, a ResNet vision tower, missing keys or values of the wrong kind.
    """
    if not isinstance(info, dict):
        raise ConfigError(
            f"{source}: expected a JSON object with the official model keys, found {type(info).__name__}."
        )
    if isinstance(info.get("vision_layers"), (list, tuple)):
        raise ConfigError(
            f"{source}: vision_layers is a list: a ResNet vision tower (RN50), which has no transformers "
            "ChineseCLIP equivalent; only ViT ones convert"
        )
    missing = [k for k in MODEL_INFO_KEYS if k not in info]
    if missing:
        raise ConfigError(
            f"{source}: missing {', '.join(missing)}; give the merged vision + text config of the official "
            "cn_clip/clip/model_configs JSON files, or --vision_model/--text_model names instead."
        )
    for key, kind in MODEL_INFO_KEYS.items():
        value = info[key]
        ok = (
            isinstance(value, str)
            if kind is str
            else (isinstance(value, (int, float)) and not isinstance(value, bool))
        )
        if not ok or (kind is int and float(value) != int(value)):
            raise ConfigError(
                f"{source}: {key} must be {'text' if kind is str else 'a ' + kind.__name__}; got {value!r}."
            )


def hf_config_from_model_info(info: dict[str, Any], logit_scale: float = 4.6052):
    """A ``ChineseCLIPConfig`` with the official model's architecture."""
    from transformers import ChineseCLIPConfig

    check_model_info(info)
    width = int(info["vision_width"])
    text = dict(
        vocab_size=info["vocab_size"],
        hidden_size=info["text_hidden_size"],
        num_hidden_layers=info["text_num_hidden_layers"],
        num_attention_heads=info["text_num_attention_heads"],
        intermediate_size=info["text_intermediate_size"],
        hidden_act=info["text_hidden_act"],
        hidden_dropout_prob=info["text_hidden_dropout_prob"],
        attention_probs_dropout_prob=info["text_attention_probs_dropout_prob"],
        max_position_embeddings=info["text_max_position_embeddings"],
        type_vocab_size=info["text_type_vocab_size"],
        initializer_range=info["text_initializer_range"],
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=int(info["vision_layers"]),
        num_attention_heads=width // int(info.get("vision_head_width", 64)),
        patch_size=int(info["vision_patch_size"]),
        image_size=int(info["image_resolution"]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=int(info["embed_dim"]),
    )
    return ChineseCLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=int(info["embed_dim"]),
        logit_scale_init_value=float(logit_scale),
    )


_VISION_RENAMES = [
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"visual\.ln_post\.", "vision_model.post_layernorm."),
    (
        r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.",
        r"vision_model.encoder.layers.\1.self_attn.out_proj.",
    ),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"vision_model.encoder.layers.\1.mlp.fc1."),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"vision_model.encoder.layers.\1.mlp.fc2."),
]
_IN_PROJ = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``CLIP`` weight names -> ``ChineseCLIPModel`` ones (float32).

    Raises:
        ConfigError: a key that belongs to neither tower (e.g. a ResNet vision tower).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        value = value.detach().to(torch.float32)
        if key.startswith("bert.pooler."):
            continue  # the official model never uses the pooler; the HF one has none
        if key.startswith("bert."):
            out["text_model." + key[len("bert.") :]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif m := _IN_PROJ.fullmatch(key):
            layer, kind = m.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"vision_model.encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
        else:
            for pattern, repl in _VISION_RENAMES:
                new, n = re.subn("^" + pattern, repl, key)
                if n:
                    out[new] = value
                    break
            else:
                unknown.append(key)
    if unknown:
        raise ConfigError(
            f"{len(unknown)} weights are not those of an official ViT Chinese-CLIP model "
            f"(e.g. {', '.join(unknown[:5])})"
        )
    return out


def _load_official(ckpt: Path) -> dict[str, torch.Tensor]:
    import torch

    if not ckpt.is_file():
        raise ConfigError(f"checkpoint {ckpt} does not exist")
    if ckpt.stat().st_size == 0:
        raise ConfigError(f"checkpoint {ckpt} is empty (0 bytes): an interrupted copy or download? Copy it again.")
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means: not a plain-tensor checkpoint
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UnsafeArtifactError(
            f"{ckpt}: not loadable with torch.load(weights_only=True) "
            f"({type(err).__name__}: {first}); "
            "only checkpoints of plain tensors (the official training's state_dict) "
            "are converted, never arbitrary pickles"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{ckpt}: expected a dict with a 'state_dict' of tensors (the official training's format)")
    return state


def _default_vocab() -> Path | None:
    spec = importlib.util.find_spec("cn_clip")  # the package only: importing cn_clip.clip needs torchvision
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "clip" / "vocab.txt"
    return path if path.is_file() else None


def convert_original(
    ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vision_model: str | None = None,
    text_model: str | None = None,
    model_info: dict[str, Any] | None = None,
    vocab: str | os.PathLike | None = None,
) -> Path:
    """Convert an official checkpoint into a Hub-layout folder ``out_dir`` (which must not exist yet).

    Args:
        vision_model, text_model: the official config names (``ViT-B-16``, ``RoBERTa-wwm-ext-base-chinese``).
        model_info: instead of the names, the merged config in the official key format.
        vocab: the ``vocab.txt`` the model was trained with; default: the one an installed cn_clip ships.

    Raises:
        UnsafeArtifactError: the file needs full unpickling.
        ConfigError: unknown config names, a missing vocab, weights that do not fit the config, an existing
            ``out_dir``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizer, ChineseCLIPModel
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} already exists and is not empty; choose a new folder")
    if model_info is None:
        if not (vision_model and text_model):
            raise ConfigError("give --vision_model and --text_model (e.g. ViT-B-16 and RoBERTa-wwm-ext-base-chinese)")
        model_info = model_info_for(vision_model, text_model)
    else:
        check_model_info(model_info)
    vocab_path = Path(vocab) if vocab else _default_vocab()
    if vocab_path is None:
        raise ConfigError(
            "no vocabulary: pass --vocab PATH/vocab.txt (the bert-base-chinese vocab the model was "
            "trained with; the cn-clip package ships it as cn_clip/clip/vocab.txt)"
        )
    if not vocab_path.is_file():
        raise ConfigError(f"vocab file {vocab_path} does not exist")
    n_vocab = len(vocab_path.read_text(encoding="utf-8").rstrip("\n").split("\n"))  # one token a line
    if n_vocab != int(model_info["vocab_size"]):
        raise ConfigError(f"vocab file {vocab_path} has {n_vocab} tokens but the model has {model_info['vocab_size']}")
    state = convert_state_dict(_load_official(Path(ckpt)))  # before any output: bad input fails first
    config = hf_config_from_model_info(model_info, float(state.get("logit_scale", torch.tensor(4.6052))))
    model = ChineseCLIPModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("position_ids"))
    extra = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise ConfigError(
            f"{ckpt}: weights do not fit the {vision_model or 'given'} + {text_model or 'given'} "
            f"architecture ({detail}); check the config names"
        )
    res = int(model_info["image_resolution"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        config.save_pretrained(staging)
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(staging / "model.safetensors"),
            metadata={"format": "pt"},
        )
        shutil.copyfile(vocab_path, staging / "vocab.txt")
        tokenizer = BertTokenizer(
            vocab=str(staging / "vocab.txt"),
            do_lower_case=True,
            model_max_length=int(model_info["text_max_position_embeddings"]),
        )
        tokenizer.save_pretrained(staging)
        ChineseCLIPImageProcessorPil(
            do_resize=True,
            size={"height": res, "width": res},
            do_center_crop=False,
            crop_size={"height": res, "width": res},
            resample=3,
            do_convert_rgb=True,
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
        ).save_pretrained(staging)
        (staging / "cnclip_lora_conversion.json").write_text(
            json.dumps(
                {
                    "source": str(ckpt),
                    "vision_model": vision_model,
                    "text_model": text_model,
                    "model_info": model_info,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    return out
