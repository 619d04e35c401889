"""A tiny, randomly initialised Chinese-CLIP checkpoint built offline.

Tests, the demo and benchmarks need a model without any Hub access. The folder this
module writes has the same shape as the Hub's ``OFA-Sys/chinese-clip-vit-*`` repos
(``config.json``, safetensors weights, ``preprocessor_config.json``, ``vocab.txt``,
tokenizer files), so every code path that loads a real checkpoint is exercised.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import torch
from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

__all__ = ["build_tiny_vocab", "tiny_config", "make_tiny_model", "TINY_MAX_POSITIONS"]

# Longer than the 52 tokens the competition recipe uses, so max_length=52 is valid.
TINY_MAX_POSITIONS = 64

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Full-width punctuation that Taobao titles use; BERT splits each into its own token.
_FULLWIDTH_PUNCT = "，。！？、；：（）【】《》“”‘’「」『』〈〉…—～·￥％＋－／＝＆＃＠"
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_vocab() -> list[str]:
    """Return a WordPiece vocabulary covering the characters of Chinese product titles.

    The tokenizer lower-cases, so only lower-case ASCII is needed. Digits and letters
    also get ``##`` continuation forms: WordPiece splits ``"36723"`` into ``3 ##6 ##7 ...``
    and would emit ``[UNK]`` for the whole word if any piece were missing. CJK
    ideographs are split one per token by BERT's pre-tokenizer, so they need no ``##`` form.
    """
    ascii_chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = list(_SPECIAL_TOKENS)
    vocab += list(ascii_chars)
    vocab += [f"##{c}" for c in ascii_chars]
    vocab += [chr(cp) for cp in range(0x4E00, 0xA000)]
    vocab += list(_FULLWIDTH_PUNCT)
    # dict.fromkeys keeps order and drops accidental duplicates (ids must be unique).
    return list(dict.fromkeys(vocab))


def tiny_config(
    vocab_size: int,
    *,
    image_size: int = 64,
    patch_size: int = 16,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 64,
) -> ChineseCLIPConfig:
    """Return a small two-tower config with the architecture of the released models.

    Args:
        vocab_size: Text vocabulary size (``len(build_tiny_vocab())``).
        image_size: Square input resolution of the vision tower.
        patch_size: ViT patch size; must divide ``image_size``.
        hidden_size: Width of both towers.
        num_layers: Transformer layers per tower.
        num_heads: Attention heads per tower.
        projection_dim: Size of the shared embedding space.
    """
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=TINY_MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=0,
        # No dropout: the tiny model starts from random weights, and dropout 0.1 on a 2-layer
        # random BERT drowns the little signal LoRA can find (training then stalls at ln(batch)).
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    vision = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    # ln(100): where released checkpoints sit after pre-training, so the loss scale
    # seen by the tiny model matches fine-tuning a real one.
    return ChineseCLIPConfig(
        text_config=text, vision_config=vision, projection_dim=projection_dim, logit_scale_init_value=4.6052
    )


def make_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 16,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 64,
) -> Path:
    """Build a random tiny ChineseCLIP model + processor and save them like a Hub repo.

    Args:
        out_dir: Folder to write; created if missing.
        seed: Seed for the weights; the same seed gives identical weights.
        image_size: Square image size; the image processor squashes every image to it
            (no crop), as the released checkpoints' ``preprocessor_config.json`` does.
        patch_size, hidden_size, num_layers, num_heads, projection_dim: See `tiny_config`.

    Returns:
        The folder, loadable with ``AutoModel``/``AutoProcessor.from_pretrained``.
    """
    arch = dict(
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        projection_dim=projection_dim,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written to a staging folder beside `out`, then each file is renamed
    # into place: a crash never leaves a half-written weights file in `out`.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as staging_dir:
        staging = Path(staging_dir)
        _save_tiny(staging, seed=seed, image_size=image_size, **arch)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    return out


def _save_tiny(out: Path, *, seed: int, image_size: int, **arch: int) -> None:
    vocab = build_tiny_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # BertTokenizer(vocab_file=...) silently ignores the file in transformers 5; vocab= does not.
    tokenizer = BertTokenizer(vocab=str(out / "vocab.txt"), model_max_length=TINY_MAX_POSITIONS)
    # The PIL backend directly: the torchvision one is optional, and both save the same
    # config under image_processor_type "ChineseCLIPImageProcessor".
    image_processor = ChineseCLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        resample=3,
        do_convert_rgb=True,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    # fork_rng: seeding must not change the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ChineseCLIPModel(tiny_config(len(vocab), image_size=image_size, **arch))
    model.save_pretrained(out)
    # Saved separately, not as a ChineseCLIPProcessor, so the folder has the Hub's
    # preprocessor_config.json and no processor_config.json: loading it exercises the
    # same AutoProcessor path as a real checkpoint.
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
