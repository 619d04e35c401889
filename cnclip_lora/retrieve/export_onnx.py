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
from pathlib import Path
from typing import Any, Sequence

import torch

from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.options import DEFAULT_MAX_LENGTH, Flip

__all__ = [
    "TEXT_FILE",
    "VISION_FILE",
    "EXPORT_FILE",
    "export_onnx",
    "is_onnx_export",
    "OnnxChineseCLIP",
    "load_onnx_model",
]

logger = logging.getLogger(__name__)

TEXT_FILE = "text_model.onnx"
VISION_FILE = "vision_model.onnx"
#: What was exported from what (base, adapter, opset); the run record is copied unchanged.
EXPORT_FILE = "onnx_export.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 17

_INSTALL_HINT = "install the optional extra: pip install 'cnclip-lora[onnx]' (onnx, onnxruntime)"


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise CnClipLoraError(f"the ONNX backend needs the {module!r} package; {_INSTALL_HINT}.") from err


class _TextTower(torch.nn.Module):
    """CLS state -> text projection -> L2 normalisation, as one graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
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
    enc = tokenizer(["红色条纹T恤", "云思木想2019秋装新款高领弹力修身长袖T恤女"], padding=True, truncation=True,
                    max_length=DEFAULT_MAX_LENGTH, return_tensors="pt")
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return {k: enc[k] for k in TEXT_INPUTS}


def _image_size(model: torch.nn.Module) -> int:
    return int(model.config.vision_config.image_size)


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: Sequence[str], output_name: str,
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings():
        # The tracer warns about Python-level shape checks inside transformers; the dynamic axes
        # are verified by the tests (batch and title length both vary).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=list(input_names),
            output_names=[output_name], dynamic_axes={**dynamic, output_name: {0: "batch"}}, do_constant_folding=True,
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
        ConfigError: ``out_dir`` is a file, or a non-empty folder and ``overwrite`` is off.
        CnClipLoraError: ``onnx`` is not installed.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export-onnx: {out} is a file; pass a folder to write the export into.")
    if not overwrite and not _empty_or_absent(out):
        raise ConfigError(f"export-onnx: {out} already exists and is not empty; pass --overwrite to replace it.")
    _require("onnx")  # the TorchScript exporter needs it to write the file
    from cnclip_lora.adapter.record import RECORD_FILE, Preprocessing, RunRecord
    from cnclip_lora.retrieve.run import load_retrieval_model

    model, processor, preprocessing, adapter_dir = load_retrieval_model(
        model_name_or_path, adapter, model_revision=model_revision, adapter_revision=adapter_revision,
        device="cpu", dtype="float32",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        text = _example_text(processor.tokenizer)
        _export(_TextTower(model).eval(), tuple(text[k] for k in TEXT_INPUTS), staging / TEXT_FILE, TEXT_INPUTS,
                "text_embeds", {k: {0: "batch", 1: "sequence"} for k in TEXT_INPUTS}, opset)
        size = _image_size(model)
        pixels = torch.zeros(2, 3, size, size)
        _export(_VisionTower(model).eval(), (pixels,), staging / VISION_FILE, ("pixel_values",), "image_embeds",
                {"pixel_values": {0: "batch"}}, opset)
        processor.save_pretrained(staging)
        record = Path(adapter_dir) / RECORD_FILE if adapter_dir else None
        if record is not None and record.is_file():
            shutil.copy2(record, staging / RECORD_FILE)
        else:  # base model alone: its own preprocessing, no flip (what retrieval uses without adapter)
            RunRecord(preprocessing if adapter_dir else Preprocessing(train_flip=Flip.NONE)).save(staging)
        info = {"base_model": model_name_or_path, "model_revision": model_revision, "adapter": adapter,
                "adapter_revision": adapter_revision, "opset": opset, "exporter": "torchscript",
                "projection_dim": int(model.config.projection_dim), "image_size": size,
                "outputs": "L2-normalised projected embeddings"}
        (staging / EXPORT_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())
        _move_into_place(staging, out)
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


def is_onnx_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds both exported towers."""
    path = Path(folder)
    return (path / TEXT_FILE).is_file() and (path / VISION_FILE).is_file()


class OnnxChineseCLIP(torch.nn.Module):
    """The two exported towers behind ``ChineseCLIPModel``'s embedding methods.

    ``get_text_features`` / ``get_image_features`` take and return torch tensors, so the
    package's embedding code (batching, read-ahead decoding, caching, sharding across processes)
    runs unchanged over onnxruntime sessions. The returned embeddings are already normalised.
    """

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None,
                 num_threads: int | None = None):
        super().__init__()
        ort = _require("onnxruntime")
        folder = Path(folder)
        if not is_onnx_export(folder):
            missing = [f for f in (TEXT_FILE, VISION_FILE) if not (folder / f).is_file()]
            raise ConfigError(f"{folder}: not an ONNX export (missing {', '.join(missing)}); "
                              f"write one with `cnclip-lora export-onnx`.")
        options = ort.SessionOptions()
        # As many threads as torch uses, so both backends get the same cores.
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        providers = list(providers or ["CPUExecutionProvider"])
        self.folder = folder
        self.text_session = ort.InferenceSession(str(folder / TEXT_FILE), options, providers=providers)
        self.vision_session = ort.InferenceSession(str(folder / VISION_FILE), options, providers=providers)
        self._text_inputs = [i.name for i in self.text_session.get_inputs()]
        # The embedding code reads the model's device and dtype from its parameters: the sessions
        # take float32 tensors on the CPU side.
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {name: given[name].cpu().numpy().astype("int64") for name in self._text_inputs}
        return torch.from_numpy(self.text_session.run(None, feed)[0])

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feed = {"pixel_values": pixel_values.float().cpu().numpy()}
        return torch.from_numpy(self.vision_session.run(None, feed)[0])


def load_onnx_model(folder: str | os.PathLike, device: str | None = None) -> tuple[OnnxChineseCLIP, Any, Any]:
    """The onnxruntime model, its processor and the recorded preprocessing from an export folder.

    ``device`` ``cuda...`` uses onnxruntime's CUDA provider when this onnxruntime has it.
    """
    from transformers import ChineseCLIPProcessor

    from cnclip_lora.modeling import pin_pil_image_processor
    from cnclip_lora.adapter.record import Preprocessing

    providers = ["CPUExecutionProvider"]
    if device and device.startswith("cuda"):
        ort = _require("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"--device {device} with --backend onnx needs onnxruntime-gpu; "
                              f"this onnxruntime offers {', '.join(ort.get_available_providers())}.")
        providers.insert(0, "CUDAExecutionProvider")
    model = OnnxChineseCLIP(folder, providers=providers)
    processor = pin_pil_image_processor(ChineseCLIPProcessor.from_pretrained(str(folder)), str(folder))
    preprocessing = Preprocessing.load(folder) or Preprocessing(train_flip=Flip.NONE)
    return model, processor, preprocessing
