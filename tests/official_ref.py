"""Run the official Chinese-CLIP (PyPI ``cn-clip==1.6.0``) as a reference, in a child process.

How the reference runs on a CPU-only torch: ``cn_clip.clip`` imports ``torchvision.transforms``.
Where torchvision imports normally it is used as is. Otherwise ``make test`` installs torchvision's
code with ``pip install --no-deps --target .venv/cnclip-reference torchvision==0.28.0`` (the PyPI wheel
matching torch 2.13); its compiled ops do not load beside the CPU torch, and ``import torchvision``
then fails only in ``torchvision._meta_registrations`` / ``_autograd_registrations`` (fake kernels
for those compiled ops). This helper puts empty modules under those two names, so the real,
unmodified ``torchvision.transforms`` and ``cn_clip`` code runs (PIL resize, ``ToTensor``,
``Normalize``; the tokenizer; ``cn_clip.clip.model.CLIP``). It runs in a child process so the test
process (and transformers' backend choice there) never sees torchvision.

Usage (by the tests): ``python tests/official_ref.py REQUEST.json OUT.safetensors`` with a request
``{"op": "tokenize", "texts": [...], "context_length": 52}``, ``{"op": "pixels", "paths": [...],
"size": 224}`` or ``{"op": "embed", "model_info": {...}, "ckpt": PATH, "texts": [...], "paths": [...]}``.
``{"op": "backend_probe", ...}`` is used by the backend test (see ``test_official.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Where the Makefile puts torchvision's code for the reference (override with CNCLIP_REFERENCE_DIR).
REFERENCE_DIR = Path(os.environ.get("CNCLIP_REFERENCE_DIR", REPO / ".venv" / "cnclip-reference"))
#: The bert-base-chinese vocab, beside the clone (tests only; never needed at run time).
SHARED_VOCAB = Path(
    os.environ.get("CNCLIP_SHARED_VOCAB", REPO.parent / "shared" / "vocab" / "bert-base-chinese-vocab.txt")
)


def reference_available() -> str | None:
    """``None`` when the reference can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("cn_clip") is None:
        return "cn-clip is not installed (make test installs it: pip install --no-deps cn-clip==1.6.0)"
    if importlib.util.find_spec("torchvision") is None and not (REFERENCE_DIR / "torchvision").is_dir():
        return f"neither torchvision nor {REFERENCE_DIR}/torchvision is present (make test installs the latter)"
    return None


def child_env(with_torchvision: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(REFERENCE_DIR)] if with_torchvision and REFERENCE_DIR.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_reference(request: dict, tmp: Path) -> dict:
    """Run one request in a child process; returns its tensors (and ``meta`` JSON, if any)."""
    from safetensors.torch import load_file

    req, out = tmp / "request.json", tmp / "out.safetensors"
    req.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, __file__, str(req), str(out)], env=child_env(), capture_output=True, text=True, timeout=600
    )
    if proc.returncode:
        raise RuntimeError(f"official reference failed:\n{proc.stderr[-4000:]}")
    result = dict(load_file(str(out)))
    meta = out.with_suffix(".json")
    if meta.is_file():
        result["meta"] = json.loads(meta.read_text(encoding="utf-8"))
    return result


def _shim_torchvision() -> None:
    try:
        import torchvision.transforms  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - the compiled ops fail to register; retry with the shim
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules[name] = types.ModuleType(name)
    import torchvision.transforms  # noqa: F401


def _main(req_path: str, out_path: str) -> None:
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    request = json.loads(Path(req_path).read_text(encoding="utf-8"))
    _shim_torchvision()
    out: dict[str, torch.Tensor] = {}
    meta: dict = {}
    op = request["op"]
    if op == "backend_probe":
        meta = _backend_probe(request)
    else:
        import cn_clip.clip as clip
        from cn_clip.clip.model import CLIP

        if op == "tokenize":
            # The official pipelines' _preprocess_text, then tokenize (cn_clip/training/data.py, eval/data.py).
            out["input_ids"] = clip.tokenize(
                [_preprocess(t) for t in request["texts"]], context_length=request.get("context_length", 52)
            )
        elif op == "pixels":
            transform = clip.image_transform(request.get("size", 224))
            out["pixel_values"] = torch.stack([transform(Image.open(p)) for p in request["paths"]])
        elif op == "embed":
            if not Path(request["ckpt"]).exists():  # a random official-format checkpoint, as its training saves one
                torch.manual_seed(0)
                model = CLIP(**request["model_info"])
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.05)
                torch.save(
                    {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                    request["ckpt"],
                )
            model = CLIP(**request["model_info"]).eval()
            state = torch.load(request["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
            transform = clip.image_transform(request["model_info"]["image_resolution"])
            with torch.no_grad():
                ids = clip.tokenize([_preprocess(t) for t in request["texts"]], context_length=52)
                out["text"] = model.encode_text(ids).float()
                images = torch.stack([transform(Image.open(p)) for p in request["paths"]])
                out["image"] = model.encode_image(images).float()
        else:
            raise SystemExit(f"unknown op {op}")
    save_file({k: v.contiguous() for k, v in out.items()} or {"_": torch.zeros(1)}, out_path)
    if meta:
        Path(out_path).with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")


def _preprocess(text: str) -> str:
    """The official ``_preprocess_text``, taken from the installed ``cn_clip/eval/data.py`` alone (the
    module itself imports lmdb and timm, which the reference does not otherwise need)."""
    global _PREPROCESS
    if _PREPROCESS is None:
        import ast
        import importlib.util

        source_path = Path(importlib.util.find_spec("cn_clip").submodule_search_locations[0]) / "eval" / "data.py"
        tree = ast.parse(source_path.read_text(encoding="utf-8"))
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_preprocess_text")
        namespace: dict = {}
        exec(compile(ast.Module(body=[fn], type_ignores=[]), str(source_path), "exec"), namespace)
        _PREPROCESS = namespace["_preprocess_text"]
    return _PREPROCESS(text)


_PREPROCESS = None


def _backend_probe(request: dict) -> dict:
    """With torchvision importable: the backend a plain load picks, and the pixels and backend our
    retrieval loaders use (with and without adapter) against the training collator's."""
    import torch
    from transformers import AutoImageProcessor

    from cnclip_lora.adapter.record import Preprocessing
    from cnclip_lora.inference.model import RetrievalModel
    from cnclip_lora.inputs.collate import ImageTextCollator
    from cnclip_lora.inputs.images import preprocess_images
    from cnclip_lora.modeling import load_model_and_processor

    plain = AutoImageProcessor.from_pretrained(request["model"])
    _, train_processor = load_model_and_processor(request["model"])
    collate = ImageTextCollator(train_processor, request["image_dir"], flip="none", max_memo_titles=0)
    train_pixels = collate([{"title": "t", "path": p} for p in request["names"]])["pixel_values"]
    meta = {"plain_backend": getattr(plain, "backend", None), "train_backend": train_processor.image_processor.backend}
    paths = [str(Path(request["image_dir"]) / p) for p in request["names"]]
    for key, adapter in (("base", None), ("adapter", request.get("adapter"))):
        if key == "adapter" and not adapter:
            continue
        loaded = RetrievalModel.from_pretrained(request["model"], adapter, device="cpu")
        processor, prep = loaded.processor, loaded.preprocessing
        pixels = preprocess_images(paths, processor.image_processor, flips=prep.inference_flip, draft=prep.draft)
        meta[f"{key}_backend"] = processor.image_processor.backend
        meta[f"{key}_max_diff"] = float((pixels - train_pixels).abs().max())
    assert isinstance(Preprocessing(), Preprocessing) and torch.is_tensor(train_pixels)
    return meta


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
