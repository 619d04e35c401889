"""``cnclip-lora export-onnx``: the merged towers as ONNX, with the processor and the record."""

from __future__ import annotations

import argparse

from cnclip_lora.commands.base import Command


class ExportOnnxCommand(Command):
    name = "export-onnx"
    help = "write the merged text and vision towers as ONNX (onnx extra) for onnxruntime serving"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from cnclip_lora.options import DEFAULT_OPSET

        parser.add_argument("out_dir", help="folder to write (text_model.onnx, vision_model.onnx, processor, record)")
        parser.add_argument(
            "--model_name_or_path", required=True, help="base Chinese-CLIP checkpoint (Hub id or folder)"
        )
        parser.add_argument("--adapter", default=None, help="LoRA adapter folder or Hub id, merged into the weights")
        parser.add_argument("--model_revision", default=None, help="Hub branch, tag or commit of the base checkpoint")
        parser.add_argument("--adapter_revision", default=None, help="Hub branch, tag or commit of the adapter")
        parser.add_argument(
            "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version (default: %(default)s)"
        )
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")

    def run(self, args: argparse.Namespace) -> int:
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
