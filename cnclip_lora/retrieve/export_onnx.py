"""ONNX export of the merged towers, and an onnxruntime model for retrieval (``--backend onnx``).

    cnclip-lora export-onnx --model_name_or_path BASE --adapter out/ onnx_out/

writes ``onnx_out/text_model.onnx`` (``input_ids, attention_mask, token_type_ids [batch, sequence]
-> text_embeds [batch, D]``) and ``onnx_out/vision_model.onnx`` (``pixel_values [batch, 3, H, W]
-> image_embeds [batch, D]``), both ending in the L2-normalised projected embedding, with the
LoRA adapter merged into the weights; beside them the processor files and the run record
(``cnclip_lora.json``), so the folder alone is enough to embed exactly as training did. A CPU
service needs only onnxruntime, the tokenizer and the image processor.

The exporter is torch's TorchScript-based one (``dynamo=False``): the torch.export-based default
needs the ``onnxscript`` package, which this package does not otherwise depend on, while the
TorchScript exporter works offline with torch alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.inference.onnx_engine import EXPORT_FILE, TEXT_FILE, TEXT_INPUTS, VISION_FILE, require
from cnclip_lora.options import DEFAULT_MAX_LENGTH, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from cnclip_lora.utils.files import WRITE_ERRNOS, remove_stale_temps, temp_prefix, write_error_message

__all__ = ["DEFAULT_OPSET", "export_onnx"]

logger = logging.getLogger(__name__)


class _TextTower(torch.nn.Module):
    """CLS state -> text projection -> L2 normalisation, as one graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        from cnclip_lora.modeling import get_text_embeds

        embeds = get_text_embeds(self.model, input_ids, attention_mask, token_type_ids)
        return torch.nn.functional.normalize(embeds, dim=-1)


class _VisionTower(torch.nn.Module):
    """Post-layernorm CLS -> visual projection -> L2 normalisation, as one graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from cnclip_lora.modeling import get_image_embeds

        return torch.nn.functional.normalize(get_image_embeds(self.model, pixel_values), dim=-1)


def _example_text(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two titles of different lengths: the traced graph must keep the padding mask (with an
    all-ones mask transformers may skip building one, and the graph would ignore padding)."""
    enc = tokenizer(
        ["红色条纹T恤", "云思木想2019秋装新款高领弹力修身长袖T恤女"],
        padding=True,
        truncation=True,
        max_length=DEFAULT_MAX_LENGTH,
        return_tensors="pt",
    )
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return {k: enc[k] for k in TEXT_INPUTS}


def _image_size(model: torch.nn.Module) -> int:
    return int(model.config.vision_config.image_size)


def _export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: Sequence[str],
    output_name: str,
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> None:
    with warnings.catch_warnings():
        # The tracer warns about Python-level shape checks inside transformers; the dynamic axes
        # are verified by the tests (batch and title length both vary).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes={**dynamic, output_name: {0: "batch"}},
            do_constant_folding=True,
        )


def _empty_or_absent(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and not any(out.iterdir()))


def export_onnx(
    model_name_or_path: str,
    out_dir: str | os.PathLike,
    adapter: str | None = None,
    *,
    model_revision: str | None = None,
    adapter_revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export the merged text and vision towers to ``out_dir`` (see the module docstring).

    Everything is written to a temporary folder beside ``out_dir`` and renamed into place at
    the end, so an interrupted export never leaves a partial folder at ``out_dir``.

    Raises:
        ConfigError: an opset outside ``MIN_OPSET..MAX_OPSET``; ``out_dir`` is a file, or a non-empty
            folder and ``overwrite`` is off (all before the model is loaded).
        CnClipLoraError: ``onnx`` is not installed.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset must be {MIN_OPSET} to {MAX_OPSET}; got {opset!r}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export-onnx: {out} is a file; pass a folder to write the export into.")
    if not overwrite and not _empty_or_absent(out):
        raise ConfigError(f"export-onnx: {out} already exists and is not empty; pass --overwrite to replace it.")
    require("onnx")  # the TorchScript exporter needs it to write the file
    from cnclip_lora.adapter.record import RECORD_FILE, RunRecord
    from cnclip_lora.inference.model import RetrievalModel

    loaded = RetrievalModel.from_pretrained(
        model_name_or_path,
        adapter,
        model_revision=model_revision,
        adapter_revision=adapter_revision,
        device="cpu",
        dtype="float32",
    )
    model, processor, adapter_dir = loaded.model, loaded.processor, loaded.adapter_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))
    try:
        text = _example_text(processor.tokenizer)
        _export(
            _TextTower(model).eval(),
            tuple(text[k] for k in TEXT_INPUTS),
            staging / TEXT_FILE,
            TEXT_INPUTS,
            "text_embeds",
            {k: {0: "batch", 1: "sequence"} for k in TEXT_INPUTS},
            opset,
        )
        size = _image_size(model)
        pixels = torch.zeros(2, 3, size, size)
        _export(
            _VisionTower(model).eval(),
            (pixels,),
            staging / VISION_FILE,
            ("pixel_values",),
            "image_embeds",
            {"pixel_values": {0: "batch"}},
            opset,
        )
        processor.save_pretrained(staging)
        record = Path(adapter_dir) / RECORD_FILE if adapter_dir else None
        if record is not None and record.is_file():
            shutil.copy2(record, staging / RECORD_FILE)
        else:  # the preprocessing the model object replays (base alone: its own, no flip)
            RunRecord(loaded.preprocessing).save(staging)
        info = {
            "base_model": model_name_or_path,
            "model_revision": model_revision,
            "adapter": adapter,
            "adapter_revision": adapter_revision,
            "opset": opset,
            "exporter": "torchscript",
            "projection_dim": int(model.config.projection_dim),
            "image_size": size,
            "outputs": "L2-normalised projected embeddings",
        }
        (staging / EXPORT_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())
        _move_into_place(staging, out)
    except OSError as err:  # a full disk or an unwritable folder: one line, nothing left behind
        if err.errno not in WRITE_ERRNOS:
            raise
        raise CnClipLoraError(write_error_message(out, err)) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; a folder already there is swapped out first and
    deleted only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
