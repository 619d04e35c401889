"""The onnxruntime engine behind ``RetrievalModel(backend="onnx")``: an export folder's two towers
behind ``ChineseCLIPModel``'s embedding methods (see :mod:`cnclip_lora.retrieve.export_onnx`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnclip_lora.errors import CnClipLoraError, ConfigError

__all__ = [
    "EXPORT_FILE",
    "TEXT_FILE",
    "TEXT_INPUTS",
    "VISION_FILE",
    "OnnxChineseCLIP",
    "is_onnx_export",
    "onnx_providers",
    "require",
]

TEXT_FILE = "text_model.onnx"
VISION_FILE = "vision_model.onnx"
#: What was exported from what (base, adapter, opset); the run record is copied unchanged.
EXPORT_FILE = "onnx_export.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_INSTALL_HINT = "install the optional extra: pip install 'cnclip-lora[onnx]' (onnx, onnxruntime)"


def require(module: str) -> Any:
    """Import an ONNX package, or say which extra to install."""
    try:
        return __import__(module)
    except ImportError as err:
        raise CnClipLoraError(f"the ONNX backend needs the {module!r} package; {_INSTALL_HINT}.") from err


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

    def __init__(
        self, folder: str | os.PathLike, providers: Sequence[str] | None = None, num_threads: int | None = None
    ):
        super().__init__()
        ort = require("onnxruntime")
        folder = Path(folder)
        if not is_onnx_export(folder):
            missing = [f for f in (TEXT_FILE, VISION_FILE) if not (folder / f).is_file()]
            raise ConfigError(
                f"{folder}: not an ONNX export (missing {', '.join(missing)}); "
                f"write one with `cnclip-lora export-onnx`."
            )
        options = ort.SessionOptions()
        # As many threads as torch uses, so both backends get the same cores.
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        providers = list(providers or ["CPUExecutionProvider"])
        self.folder = folder
        self.text_session = _session(ort, folder / TEXT_FILE, options, providers)
        self.vision_session = _session(ort, folder / VISION_FILE, options, providers)
        self._text_inputs = [i.name for i in self.text_session.get_inputs()]
        _check_towers(folder, self.text_session, self.vision_session)
        # The embedding code reads the model's device and dtype from its parameters: the sessions
        # take float32 tensors on the CPU side.
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
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


def _session(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session of ``path``, or one line naming the file when it is not a usable graph."""
    if path.stat().st_size == 0:
        raise ConfigError(
            f"{path}: the file is empty (an interrupted copy?); export again with `cnclip-lora export-onnx`."
        )
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own kinds (InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path}: not a readable ONNX graph ({first}); it is truncated, damaged or not an ONNX file: "
            "export again with `cnclip-lora export-onnx`."
        ) from None


def _check_towers(folder: Path, text: Any, vision: Any) -> None:
    """The graphs are this package's two towers: the text inputs, one pixel input, one embedding
    output each, of the same width."""
    text_inputs = {i.name for i in text.get_inputs()}
    if "input_ids" not in text_inputs or not text_inputs <= set(TEXT_INPUTS):
        raise ConfigError(
            f"{folder / TEXT_FILE}: inputs {sorted(text_inputs)}, expected {list(TEXT_INPUTS)}: not a text tower "
            "written by `cnclip-lora export-onnx`."
        )
    vision_inputs = [i.name for i in vision.get_inputs()]
    if vision_inputs != ["pixel_values"]:
        raise ConfigError(
            f"{folder / VISION_FILE}: inputs {vision_inputs}, expected ['pixel_values']: not a vision tower "
            "written by `cnclip-lora export-onnx`."
        )
    widths = [o.shape[-1] for o in (*text.get_outputs()[:1], *vision.get_outputs()[:1])]
    if len(widths) == 2 and all(isinstance(w, int) for w in widths) and widths[0] != widths[1]:
        raise ConfigError(
            f"{folder}: the text tower embeds into {widths[0]} dimensions and the vision tower into {widths[1]}: "
            "the two files come from different exports."
        )


def onnx_providers(device: str | None) -> list[str]:
    """onnxruntime execution providers for ``device`` (``cuda...`` needs onnxruntime-gpu)."""
    providers = ["CPUExecutionProvider"]
    if device and device.startswith("cuda"):
        ort = require("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"--device {device} with --backend onnx needs onnxruntime-gpu; "
                f"this onnxruntime offers {', '.join(ort.get_available_providers())}."
            )
        providers.insert(0, "CUDAExecutionProvider")
    return providers
