"""``cnclip-lora export-onnx``: the merged towers as ONNX, with the processor and the record."""

from __future__ import annotations

from typing import Any

from cnclip_lora.commands.base import DataclassCommand


class ExportOnnxCommand(DataclassCommand):
    name = "export-onnx"
    help = "write the merged text and vision towers as ONNX (onnx extra) for onnxruntime serving"

    arguments = "ExportArguments"

    def run(self, args: Any) -> int:
        from cnclip_lora.inference.onnx_engine import TEXT_FILE, VISION_FILE
        from cnclip_lora.retrieve.export_onnx import export_onnx

        out = export_onnx(
            args.model_name_or_path,
            args.out_dir,
            args.adapter,
            model_revision=args.model_revision,
            adapter_revision=args.adapter_revision,
            opset=args.opset,
            overwrite=args.overwrite,
        )
        print(f"ONNX export written to {out}: {TEXT_FILE}, {VISION_FILE}, processor and record")
        return 0
