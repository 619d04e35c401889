"""``RetrievalModel``: one object that holds a base model (with its adapter merged), its processor and
the run record, and embeds titles and images exactly as training prepared them.

    from cnclip_lora import RetrievalModel

    model = RetrievalModel.from_pretrained("OFA-Sys/chinese-clip-vit-huge-patch14", adapter="out/")
    texts = model.encode_texts(["2019秋装新款长袖T恤女"])       # [1, D], L2-normalised
    images = model.encode_images(["xfdata/image/1.jpg"])       # paths or PIL images
    scores = texts @ images.T

Every door of the package (``retrieve``, ``evaluate``, ``report``, ``serve``, ``export-onnx`` and the
Trainer's evaluation) embeds through this object, so the recorded preprocessing (title preparation,
``max_length``, padding, the flip rule at retrieval, decode options) is applied in one place. The
ONNX backend is the same object over an export folder, with onnxruntime as its engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnclip_lora.adapter import WEIGHTS_FILE
from cnclip_lora.errors import ConfigError
from cnclip_lora.options import Backend, Flip, check_backend_options, parse_choice

if TYPE_CHECKING:
    from cnclip_lora.adapter.record import Preprocessing

__all__ = ["DTYPES", "RetrievalModel", "check_device"]

logger = logging.getLogger(__name__)

#: ``--dtype`` values and their torch names.
DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str | None) -> None:
    """Refuse a ``device`` that names no usable device, before any data or model is loaded.

    Raises:
        ConfigError: The name is not a torch device, its accelerator is absent, or its index is
            beyond the devices present.
    """
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(
            f"--device {device!r} is not a device name ({err}); give e.g. cpu, cuda, cuda:1, mps."
        ) from None
    if parsed.type in ("cpu", "meta"):
        return
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif backend is not None and hasattr(backend, "is_available"):
        available = bool(backend.is_available())
        count = int(backend.device_count()) if available and hasattr(backend, "device_count") else 0
    else:
        available, count = False, 0
    if not available:
        raise ConfigError(
            f"--device {device!r}: this machine has no {parsed.type} device; use --device cpu "
            "or leave --device unset (the GPU when there is one)."
        )
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(
            f"--device {device!r}: only {count} {parsed.type} device(s) here "
            f"({parsed.type}:0 to {parsed.type}:{count - 1})."
        )


def _torch_dtype(dtype: str | None) -> Any:
    import torch

    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be {', '.join(DTYPES)}; got {dtype!r}.")
    return getattr(torch, dtype)


#: Files of a model folder that do not change what it computes.
_INERT_FILES = {"README.md", ".gitattributes", "LICENSE"}


def _source_identity(
    model_name_or_path: str, revision: str | None, commit: str | None, memo_dir: Path | None
) -> dict[str, Any]:
    """Local folders by the content of every file in them (weights, configs, processor; each file
    hashed once per version, :func:`~cnclip_lora.utils.caches.content_digest`); Hub ids by the commit
    actually loaded (``revision`` alone, e.g. ``main``, moves when the repository changes)."""
    from cnclip_lora.utils.caches import content_digest

    path = Path(model_name_or_path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.name not in _INERT_FILES)
        return {"dir": str(path.resolve()), "files": [(f.name, content_digest(f, memo_dir)) for f in files]}
    return {"hub": model_name_or_path, "revision": revision, "commit": commit}


def _hash_images(h: Any, items: Sequence[Any]) -> None:
    """Files by absolute name and stat identity (the package's one rule, :func:`hash_file_stats`: a
    replaced file changes the key); PIL images by their pixels."""
    from cnclip_lora.utils.files import hash_file_stats

    for item in items:
        if isinstance(item, (str, os.PathLike)):
            hash_file_stats(h, [os.path.abspath(os.fspath(item))])
        else:
            h.update(f"pil|{item.mode}|{item.size}|{hashlib.sha256(item.tobytes()).hexdigest()}\0".encode())


class RetrievalModel:
    """A Chinese-CLIP model ready for retrieval: weights, processor and the recorded preprocessing.

    Build it with :meth:`from_pretrained` (a base, an optional adapter, a backend), or wrap an
    in-memory model (the Trainer's evaluation wraps the model being trained).

    Args:
        model: a ``ChineseCLIPModel`` (plain, PEFT-wrapped or merged) or the ONNX engine.
        processor: the ``ChineseCLIPProcessor`` the model was trained with.
        preprocessing: the recorded :class:`~cnclip_lora.adapter.record.Preprocessing`; default: the
            checkpoint's own, no flip (the zero-shot baseline).
        cache_dir: embedding cache folder; ``None`` embeds without caching. A cache needs
            ``source`` (what the weights are), so that a key names the model that wrote it.
        source: base model id or folder, with ``revision``; ``adapter_dir`` the merged adapter's folder.
        batch_size: default embedding batch size.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        preprocessing: Preprocessing | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        source: str | None = None,
        revision: str | None = None,
        adapter_dir: str | os.PathLike | None = None,
        backend: str = Backend.TORCH,
        batch_size: int = 64,
    ) -> None:
        from cnclip_lora.adapter.record import Preprocessing

        if cache_dir is not None and source is None:
            raise ValueError("RetrievalModel: an embedding cache needs `source` (the weights' identity)")
        self.model = model
        self.processor = processor
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing(train_flip=Flip.NONE)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.source, self.revision = source, revision
        self.adapter_dir = str(adapter_dir) if adapter_dir is not None else None
        self.backend = parse_choice(Backend, backend, "backend")
        self.batch_size = batch_size

    # ----------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        adapter: str | None = None,
        *,
        model_revision: str | None = None,
        adapter_revision: str | None = None,
        backend: str = Backend.TORCH,
        device: str | None = None,
        dtype: str | None = None,
        allow_different_base: bool = False,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
    ) -> RetrievalModel:
        """Load a base (Hub id or folder) with ``adapter`` merged in, or an ONNX export folder.

        With an adapter, the base must be the one it was trained on
        (:func:`cnclip_lora.adapter.base_identity.check_base_identity`; ``allow_different_base``
        relaxes same-architecture differences), and the adapter folder is validated before peft
        reads it. ``backend="onnx"``: ``model_name_or_path`` is a ``cnclip-lora export-onnx``
        folder, which already holds its adapter and float32 weights.

        Raises:
            ConfigError: a bad device or dtype, or an adapter/dtype with the ONNX backend.
        """
        backend = parse_choice(Backend, backend, "--backend")
        check_device(device)
        _torch_dtype(dtype)
        common = dict(cache_dir=cache_dir, source=model_name_or_path, batch_size=batch_size)
        check_backend_options(backend, adapter, dtype)
        if backend == Backend.ONNX:
            model, processor, preprocessing = cls._load_onnx(model_name_or_path, device)
            return cls(model, processor, preprocessing, backend=Backend.ONNX, **common)
        model, processor, preprocessing, adapter_dir = cls._load_torch(
            model_name_or_path,
            adapter,
            model_revision=model_revision,
            adapter_revision=adapter_revision,
            allow_different_base=allow_different_base,
        )
        model = cls._place(model, device, dtype)
        return cls(model, processor, preprocessing, revision=model_revision, adapter_dir=adapter_dir, **common)

    @staticmethod
    def _load_torch(
        model_name_or_path: str,
        adapter: str | None,
        *,
        model_revision: str | None,
        adapter_revision: str | None,
        allow_different_base: bool,
    ) -> tuple[Any, Any, Preprocessing | None, str | None]:
        from cnclip_lora.adapter.record import Preprocessing
        from cnclip_lora.modeling import load_model_and_processor

        if adapter:  # a mistyped adapter is reported before the base model is loaded
            from cnclip_lora.adapter.hub import resolve_adapter

            adapter_dir = str(resolve_adapter(adapter, revision=adapter_revision))
        model, processor = load_model_and_processor(model_name_or_path, revision=model_revision)
        if not adapter:
            return model, processor, None, None
        from peft import PeftModel
        from transformers import ChineseCLIPProcessor

        from cnclip_lora.adapter.base_identity import base_identity, check_base_identity, recorded_base_identity
        from cnclip_lora.adapter.validate import validate_adapter_folder
        from cnclip_lora.modeling import pin_pil_image_processor, quiet_peft_wrapping

        check_base_identity(
            recorded_base_identity(adapter_dir),
            base_identity(model, processor.tokenizer, model_name_or_path, model_revision),
            adapter=adapter,
            allow_different_base=allow_different_base,
        )
        validate_adapter_folder(adapter_dir, model)  # damaged, foreign or incomplete: refused before peft
        with quiet_peft_wrapping():
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        if any((Path(adapter_dir) / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
            # The processor saved with the adapter is the one training used, on the same (PIL) backend.
            processor = pin_pil_image_processor(ChineseCLIPProcessor.from_pretrained(adapter_dir), adapter_dir)
        return model, processor, Preprocessing.load(adapter_dir), adapter_dir

    @staticmethod
    def _load_onnx(folder: str, device: str | None) -> tuple[Any, Any, Preprocessing]:
        from transformers import ChineseCLIPProcessor

        from cnclip_lora.adapter.record import RECORD_FILE, Preprocessing
        from cnclip_lora.inference.onnx_engine import OnnxChineseCLIP, onnx_providers
        from cnclip_lora.modeling import pin_pil_image_processor

        model = OnnxChineseCLIP(folder, providers=onnx_providers(device))
        preprocessing = Preprocessing.load(folder)
        if preprocessing is None:  # the export always writes it: without it the inputs would be guessed
            raise ConfigError(
                f"{folder}: no {RECORD_FILE} beside the ONNX files, so how titles and images were "
                "prepared is unknown; export again with `cnclip-lora export-onnx`."
            )
        # The image processor's and the tokenizer's files (either name of the processor's own).
        needed = (("processor_config.json", "preprocessor_config.json"), ("tokenizer_config.json",))
        missing = [" or ".join(names) for names in needed if not any((Path(folder) / n).is_file() for n in names)]
        if missing:  # transformers would look for them on the Hub instead
            raise ConfigError(
                f"{folder}: no {', '.join(missing)} beside the ONNX files, so titles and images cannot be prepared "
                "as in training; export again with `cnclip-lora export-onnx`."
            )
        processor = pin_pil_image_processor(ChineseCLIPProcessor.from_pretrained(str(folder)), str(folder))
        return model, processor, preprocessing

    @staticmethod
    def _place(model: Any, device: str | None, dtype: str | None) -> Any:
        import torch

        from cnclip_lora.utils.distributed import join_launch_group

        if device is None:
            join_launch_group()  # joins a launcher's process group, which pins this process to its own GPU
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        torch_dtype = _torch_dtype(dtype)
        model = model.to(device=device, dtype=torch_dtype) if torch_dtype else model.to(device)
        return model.eval()

    # ---------------------------------------------------------------- accessors
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    @property
    def max_length(self) -> int:
        return self.preprocessing.max_length

    @property
    def dtype(self) -> str:
        """The loaded weights' dtype (``torch.float32``...)."""
        return str(next(self.model.parameters()).dtype)

    # ---------------------------------------------------------------- encoding
    def encode_texts(
        self,
        titles: Sequence[str],
        *,
        batch_size: int | None = None,
        cache: bool = True,
        pad_to_max_length: bool = False,
    ) -> np.ndarray:
        """L2-normalised embeddings ``[len(titles), D]`` (float32, input order), each title prepared,
        truncated and padded as the record says; through the embedding cache when there is one."""
        from cnclip_lora.inference.embed import embed_texts

        titles = [str(t) for t in titles]
        return embed_texts(
            self.model,
            self.tokenizer,
            titles,
            preprocessing=self.preprocessing,
            batch_size=batch_size or self.batch_size,
            pad_to_max_length=pad_to_max_length,
            **self._cache("text", titles, cache),
        )

    def encode_images(
        self,
        images: Sequence[Any],
        *,
        batch_size: int | None = None,
        cache: bool = True,
        pixel_cache: Any = None,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """L2-normalised embeddings ``[len(images), D]`` of image files or PIL images, decoded, turned
        upright, flipped and resized as the record says; through the embedding cache when there is one."""
        from cnclip_lora.inference.embed import embed_images

        images = list(images)
        return embed_images(
            self.model,
            self.image_processor,
            images,
            preprocessing=self.preprocessing,
            batch_size=batch_size or self.batch_size,
            pixel_cache=pixel_cache,
            num_threads=num_threads,
            **self._cache("image", images, cache),
        )

    def count_tokens(self, titles: Sequence[str]) -> list[int]:
        """Tokens each title takes (with ``[CLS]``/``[SEP]``) before truncation to :attr:`max_length`,
        counted the way :meth:`encode_texts` tokenises it."""
        from cnclip_lora.inputs.text import count_tokens

        return count_tokens(titles, self.tokenizer, self.preprocessing.title_normalization)

    # ------------------------------------------------------------------- cache
    def fingerprint(self, kind: str, items: Sequence[Any]) -> str:
        """Cache key of embedding ``items`` (``kind`` ``"text"`` or ``"image"``): any change of base
        weights, adapter weights, processor, preprocessing, dtype, backend or inputs changes it."""
        from cnclip_lora.utils.caches import content_digest

        if self.source is None:
            raise ValueError("RetrievalModel.fingerprint needs `source` (the weights' identity)")
        commit = getattr(getattr(self.model, "config", None), "_commit_hash", None)
        image_processor = getattr(self.image_processor, "to_dict", dict)()
        payload: dict[str, Any] = {
            "kind": kind,
            "backend": str(self.backend),
            "model": _source_identity(self.source, self.revision, commit, self.cache_dir),
            "adapter": (
                content_digest(Path(self.adapter_dir) / WEIGHTS_FILE, self.cache_dir) if self.adapter_dir else None
            ),
            "preprocessing": self.preprocessing.to_dict(),
            "image_processor": image_processor,
            "tokenizer": [type(self.tokenizer).__name__, getattr(self.tokenizer, "vocab_size", None)],
            "dtype": self.dtype,
        }
        h = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
        if kind == "image":
            _hash_images(h, items)
        else:
            for item in items:
                h.update(str(item).encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()[:32]

    def _cache(self, kind: str, items: Sequence[Any], wanted: bool) -> dict[str, Any]:
        if not wanted or self.cache_dir is None:
            return {}
        return {"cache_dir": self.cache_dir, "fingerprint": self.fingerprint(kind, items)}

    def __repr__(self) -> str:
        adapter = f", adapter={self.adapter_dir!r}" if self.adapter_dir else ""
        return (
            f"RetrievalModel(source={self.source!r}{adapter}, backend={self.backend!s}, max_length={self.max_length})"
        )
