"""Retrieval: merged adapters, cached ``datasets.map`` embeddings, bounded-memory ranking, outputs.

    model, processor, prep = load_retrieval_model("OFA-Sys/chinese-clip-vit-huge-patch14", adapter="out/")
    result = retrieve(RetrievalArguments(model_name_or_path=..., adapter="out/", data_dir="xfdata",
                                         output="prediction_result/submit.csv"))

The adapter is merged into the base weights (``merge_and_unload``), so retrieval runs at plain
model speed; the preprocessing recorded with the adapter is replayed (flip rule, title length).
"""

from __future__ import annotations

from cnclip_lora.adapter import WEIGHTS_FILE
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cnclip_lora.utils.caches import usable_cache_dir
from cnclip_lora.adapter.record import Preprocessing
from cnclip_lora.data import CompetitionData, load_competition_data, submission_order
from cnclip_lora.inference.embed import embed_images, embed_texts
from cnclip_lora.inference.evaluator import RetrievalEvaluator, prefixed_recall
from cnclip_lora.utils.distributed import is_main_process, join_launch_group
from cnclip_lora.errors import CnClipLoraError, ConfigError
from cnclip_lora.options import Assign, Backend, FaissIndex, Flip, choices, parse_choice
from cnclip_lora.utils.files import atomic_path, hash_file_stats
from cnclip_lora.modeling import load_model_and_processor, pin_pil_image_processor, quiet_peft_wrapping
from cnclip_lora.inference.search import assign, assign_one_to_one, rank

__all__ = [
    "RetrievalArguments",
    "RetrievalResult",
    "load_retrieval_model",
    "embedding_fingerprint",
    "retrieve",
    "evaluate_retrieval",
    "write_submission",
    "write_topk",
    "check_device",
    "check_output_paths",
    "embed_gallery",
    "LabelledSplit",
    "labelled_split",
    "labelled_evaluator",
]

logger = logging.getLogger(__name__)

@dataclass
class RetrievalArguments:
    model_name_or_path: str = field(metadata={"help": "Base Chinese-CLIP checkpoint (Hub id or local folder)."})
    data_dir: str = field(default="xfdata", metadata={"help": "Folder in the competition layout."})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder or Hub id; none = the base model (zero-shot baseline)."}
    )
    adapter_revision: str | None = field(default=None, metadata={"help": "Hub revision of the adapter."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    output: str | None = field(default=None, metadata={"help": "Submission CSV (sample_submit.csv's columns and order)."})
    top_k: int = field(default=10, metadata={"help": "Results kept per query in the top-k file (the one-to-one assignment looks beyond them)."})
    topk_output: str | None = field(default=None, metadata={"help": "CSV with query,rank,path,score for the top-k."})
    assign: str = field(
        default=Assign.ARGMAX,
        metadata={"help": "argmax: best image per query. hungarian: one distinct image per query, maximising total "
                          "similarity over the whole gallery.", "choices": choices(Assign)},
    )
    batch_size: int = field(default=64, metadata={"help": "Embedding batch size."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Embedding cache folder (keyed by model, adapter, images, preprocessing); default: "
                          "HF_DATASETS_CACHE/cnclip_lora/embeddings (see `cnclip-lora cache`); '' disables."},
    )
    use_faiss: bool = field(default=False, metadata={"help": "Rank with a FAISS inner-product index (faiss extra)."})
    faiss_index: str = field(default=FaissIndex.FLAT, metadata={"help": "flat (exact) | hnsw | ivf (approximate, faster).",
                                                                "choices": choices(FaissIndex)})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu...; default: cuda when available."})
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16 for the model."})
    backend: str = field(
        default=Backend.TORCH,
        metadata={"help": "torch: the checkpoint (+ merged adapter). onnx: onnxruntime over a `cnclip-lora export-onnx` "
                          "folder given as --model_name_or_path (onnx extra).", "choices": choices(Backend)},
    )
    split: str = field(
        default="val", metadata={"help": "evaluate: 'val' (held-out split) or 'test' (queries + answers file).", "choices": ["val", "test"]}
    )
    answers: str | None = field(default=None, metadata={"help": "evaluate --split test: answers CSV (query,path); default DATA_DIR/test_answers.csv."})
    val_size: float | None = field(
        default=None,
        metadata={"help": "evaluate --split val: held-out share or count. Default: the adapter's recorded training "
                          "split (0.1 without a record); a different value needs --allow_different_split."},
    )
    split_seed: int | None = field(
        default=None, metadata={"help": "evaluate --split val: split seed. Default: the adapter's recorded one (42 without)."}
    )
    allow_different_split: bool = field(
        default=False,
        metadata={"help": "evaluate --split val: accept a split other than the adapter's training split (its "
                          "held-out recall then includes trained-on images)."},
    )
    allow_different_base: bool = field(
        default=False,
        metadata={"help": "Use the adapter on a base with the same architecture but other weights or vocabulary "
                          "than it was trained on (a re-saved or converted copy of that base; a deliberate "
                          "transfer experiment). Off: such a pair is refused, since its rankings are silently wrong."},
    )

    def __post_init__(self) -> None:
        self.assign = parse_choice(Assign, self.assign, "--assign")
        self.faiss_index = parse_choice(FaissIndex, self.faiss_index, "--faiss_index")
        if self.top_k < 1:
            raise ConfigError(f"--top_k must be >= 1; got {self.top_k}.")
        if self.topk_output and not self.top_k:
            raise ConfigError("--topk_output needs --top_k.")
        self.backend = parse_choice(Backend, self.backend, "--backend")
        if self.backend == Backend.ONNX and (self.adapter or self.dtype):
            raise ConfigError("--backend onnx takes an export folder as --model_name_or_path, with the adapter already "
                              "merged and float32 weights: drop --adapter/--dtype (or export again with that adapter).")


@dataclass
class RetrievalResult:
    assignment: np.ndarray              # [Q] gallery index per query
    scores: np.ndarray                  # [Q, k]
    indices: np.ndarray                 # [Q, k]
    gallery_paths: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def _resolve_dtype(dtype: str | None):
    import torch

    if dtype is None:
        return None
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16; got {dtype!r}.") from None


def load_retrieval_model(
    model_name_or_path: str,
    adapter: str | None = None,
    *,
    model_revision: str | None = None,
    adapter_revision: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    allow_different_base: bool = False,
) -> tuple[Any, Any, Preprocessing, str | None]:
    """Base model with the adapter merged in, its processor, the recorded preprocessing, and the
    adapter's local folder (``None`` without adapter).

    Without an adapter, preprocessing is the checkpoint's own with no flip (zero-shot baseline).
    With one, the base must be the one it was trained on
    (:func:`cnclip_lora.adapter.base_identity.check_base_identity`; ``allow_different_base`` relaxes
    same-architecture differences).
    """
    import torch

    model, processor = load_model_and_processor(model_name_or_path, revision=model_revision)
    preprocessing = Preprocessing(train_flip=Flip.NONE)
    adapter_dir: str | None = None
    if adapter:
        from peft import PeftModel
        from transformers import ChineseCLIPProcessor

        from cnclip_lora.adapter.validate import validate_adapter_folder
        from cnclip_lora.adapter.hub import resolve_adapter

        from cnclip_lora.adapter.base_identity import base_identity, check_base_identity, recorded_base_identity

        adapter_dir = str(resolve_adapter(adapter, revision=adapter_revision))
        check_base_identity(
            recorded_base_identity(adapter_dir),
            base_identity(model, processor.tokenizer, model_name_or_path, model_revision),
            adapter=adapter, allow_different_base=allow_different_base,
        )
        validate_adapter_folder(adapter_dir, model)  # damaged, foreign or incomplete: refused before peft
        with quiet_peft_wrapping():
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        preprocessing = Preprocessing.load(adapter_dir) or preprocessing
        if any((Path(adapter_dir) / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
            # The processor saved with the adapter is the one training used, on the same (PIL) backend.
            processor = pin_pil_image_processor(ChineseCLIPProcessor.from_pretrained(adapter_dir), adapter_dir)
    torch_dtype = _resolve_dtype(dtype)
    if device is None:
        join_launch_group()  # joins a launcher's process group, which pins this process to its own GPU
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device, dtype=torch_dtype) if torch_dtype else model.to(device)
    model.eval()
    return model, processor, preprocessing, adapter_dir


def _load_for_backend(args: RetrievalArguments) -> tuple[Any, Any, Preprocessing, str | None]:
    """:func:`load_retrieval_model`, or the onnxruntime model of an export folder (``--backend onnx``)."""
    if args.backend == Backend.ONNX:
        from cnclip_lora.retrieve.export_onnx import load_onnx_model

        model, processor, preprocessing = load_onnx_model(args.model_name_or_path, device=args.device)
        return model, processor, preprocessing, None
    return load_retrieval_model(
        args.model_name_or_path, args.adapter, model_revision=args.model_revision,
        adapter_revision=args.adapter_revision, device=args.device, dtype=args.dtype,
        allow_different_base=args.allow_different_base,
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_identity(model_name_or_path: str, revision: str | None, commit: str | None = None) -> dict[str, Any]:
    """Local folders by weight-file size+mtime (hashing GBs each run is too slow); Hub ids by the
    commit actually loaded (``revision`` alone, e.g. ``main``, moves when the repository changes)."""
    path = Path(model_name_or_path)
    if path.is_dir():
        files = sorted([*path.glob("*.safetensors"), *path.glob("*.onnx")])
        return {"dir": str(path.resolve()), "weights": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
    return {"hub": model_name_or_path, "revision": revision, "commit": commit}


def embedding_fingerprint(
    kind: str,
    *,
    model_name_or_path: str,
    model_revision: str | None,
    adapter_dir: str | None,
    items: Sequence[str],
    preprocessing: Preprocessing,
    dtype: str | None = None,
    model_commit: str | None = None,
) -> str:
    """Cache key: any change of base model, adapter weights, inputs, or preprocessing changes it.

    Image inputs are keyed by path, size and mtime, so a replaced image file is re-embedded.
    """
    payload: dict[str, Any] = {
        "kind": kind,
        "model": _model_identity(model_name_or_path, model_revision, model_commit),
        "adapter": _file_digest(Path(adapter_dir) / WEIGHTS_FILE) if adapter_dir else None,
        "preprocessing": preprocessing.to_dict(),
        "dtype": dtype,
    }
    h = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    if kind == "image":  # absolute: the default cache is shared by every working directory
        hash_file_stats(h, [os.path.abspath(p) for p in items])
    else:
        for item in items:
            h.update(item.encode("utf-8") + b"\0")
    return h.hexdigest()[:32]


def _fingerprint_args(args: RetrievalArguments, model: Any, preprocessing: Preprocessing,
                      adapter_dir: str | None) -> dict[str, Any]:
    """Everything but ``kind``/``items`` of :func:`embedding_fingerprint`, so every caller keys alike."""
    return dict(model_name_or_path=args.model_name_or_path, model_revision=args.model_revision,
                adapter_dir=adapter_dir, preprocessing=preprocessing,
                # What was loaded, not what was asked for: --dtype unset means the checkpoint's own.
                dtype=str(next(model.parameters()).dtype),
                model_commit=getattr(getattr(model, "config", None), "_commit_hash", None))


def _embedding_cache_dir(args: RetrievalArguments) -> str | None:
    return None if args.cache_dir == "" else usable_cache_dir(args.cache_dir, "embeddings")


def embed_gallery(
    args: RetrievalArguments, model: Any, processor: Any, preprocessing: Preprocessing, adapter_dir: str | None,
    gallery_paths: Sequence[str],
) -> np.ndarray:
    """Gallery embeddings through the same cache (and key) as ``retrieve``/``evaluate``: a service
    over a gallery that ``retrieve`` already embedded starts without re-embedding it."""
    cache_dir = _embedding_cache_dir(args)
    common = _fingerprint_args(args, model, preprocessing, adapter_dir)
    return embed_images(
        model, processor.image_processor, gallery_paths, preprocessing=preprocessing, batch_size=args.batch_size,
        cache_dir=cache_dir, fingerprint=embedding_fingerprint("image", items=gallery_paths, **common) if cache_dir else None,
    )


@dataclass
class LabelledSplit:
    """A labelled query set: ``labels[i]`` is the index in ``names`` of query ``i``'s true image."""

    titles: list[str]
    labels: list[int]
    names: list[str]
    image_dir: Path


def labelled_split(args: RetrievalArguments) -> LabelledSplit:
    """The labelled set ``evaluate`` scores: the held-out split (``--split val``) or the test
    queries with an answers file (``--split test``); validated before any model is loaded."""
    data = _load_data(args, skip_bad_rows=True, require_queries=args.split == "test", answers_file=args.answers)
    if args.split == "val":
        if len(data.val) == 0:
            raise ConfigError("--split val needs a validation split: --val_size must be > 0.")
        return LabelledSplit(list(data.val["title"]), [int(x) for x in data.val["label"]],
                             list(data.val_gallery["path"]), Path(data.image_dir))
    if data.answers is None:
        raise ConfigError(
            f"--split test needs answers: {Path(args.data_dir) / 'test_answers.csv'} is missing; pass --answers FILE."
        )
    titles = list(data.queries["title"])
    labels = [int(x) for x in data.answers.sort_values("query")["label"]]
    if len(labels) != len(titles):
        raise CnClipLoraError(f"the answers file has {len(labels)} rows for {len(titles)} queries.")
    return LabelledSplit(titles, labels, list(data.gallery["path"]), Path(data.image_dir))


def labelled_evaluator(
    args: RetrievalArguments, split: LabelledSplit, model: Any, processor: Any, preprocessing: Preprocessing,
    adapter_dir: str | None,
) -> RetrievalEvaluator:
    """The evaluator of ``split`` for this loaded model, its embeddings under retrieve's cache keys;
    metrics are named after ``--split`` (``val_t2i_R@1``)."""
    gallery_paths = [str(split.image_dir / n) for n in split.names]
    cache_dir = _embedding_cache_dir(args)
    keys = None
    if cache_dir:
        common = _fingerprint_args(args, model, preprocessing, adapter_dir)
        keys = (embedding_fingerprint("text", items=split.titles, **common),
                embedding_fingerprint("image", items=gallery_paths, **common))
    return RetrievalEvaluator(split.titles, split.labels, gallery_paths, processor, preprocessing, name=args.split,
                              batch_size=args.batch_size, cache_dir=cache_dir, cache_keys=keys)


def _embed_split(
    args: RetrievalArguments, model: Any, processor: Any, preprocessing: Preprocessing, adapter_dir: str | None,
    titles: Sequence[str], gallery_paths: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    cache_dir = _embedding_cache_dir(args)
    common = _fingerprint_args(args, model, preprocessing, adapter_dir)
    gallery = embed_images(
        model, processor.image_processor, gallery_paths, preprocessing=preprocessing, batch_size=args.batch_size,
        cache_dir=cache_dir, fingerprint=embedding_fingerprint("image", items=gallery_paths, **common) if cache_dir else None,
    )
    queries = embed_texts(
        model, processor.tokenizer, titles, max_length=preprocessing.max_length, batch_size=args.batch_size,
        title_normalization=preprocessing.title_normalization, cache_dir=cache_dir, fingerprint=embedding_fingerprint("text", items=titles, **common) if cache_dir else None,
    )
    return queries, gallery


def write_submission(path: str | os.PathLike, sample_submit: pd.DataFrame | None, titles: Sequence[str],
                     chosen_paths: Sequence[str]) -> Path:
    """Fill ``sample_submit.csv``'s ``path`` column (its other columns and row order kept), atomically."""
    if sample_submit is not None:
        if len(sample_submit) != len(chosen_paths):
            raise CnClipLoraError(
                f"sample_submit.csv has {len(sample_submit)} rows but there are {len(chosen_paths)} queries."
            )
        # Each row gets the image chosen for its own title, whatever the template's row order.
        order = submission_order(sample_submit, titles)
        frame = sample_submit.copy()
        frame["path"] = [chosen_paths[i] for i in order]
    else:
        frame = pd.DataFrame({"title": list(titles), "path": list(chosen_paths)})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
    return Path(path)


def write_topk(path: str | os.PathLike, scores: np.ndarray, indices: np.ndarray, gallery_paths: Sequence[str]) -> Path:
    """``query,rank,path,score`` rows (query = row in test_query.csv, rank = 1..k), atomically."""
    q, k = indices.shape
    frame = pd.DataFrame({
        "query": np.repeat(np.arange(q), k),
        "rank": np.tile(np.arange(1, k + 1), q),
        "path": [gallery_paths[i] for i in indices.reshape(-1)],
        "score": np.round(scores.reshape(-1).astype(np.float64), 6),
    })
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
    return Path(path)


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that names no usable device, before any data or model is loaded.

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
        raise ConfigError(f"--device {device!r} is not a device name ({err}); give e.g. cpu, cuda, cuda:1, mps.") from None
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
        raise ConfigError(f"--device {device!r}: this machine has no {parsed.type} device; use --device cpu "
                          "or leave --device unset (the GPU when there is one).")
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"--device {device!r}: only {count} {parsed.type} device(s) here "
                          f"({parsed.type}:0 to {parsed.type}:{count - 1}).")


def check_output_paths(args: RetrievalArguments) -> None:
    """Refuse output paths that cannot be written, or that clash, before any work is done.

    Raises:
        ConfigError: An output is an existing folder, lies under an existing file, or
            ``--output`` and ``--topk_output`` name the same file (the second would replace the first).
    """
    given = [(flag, value) for flag, value in (("--output", args.output), ("--topk_output", args.topk_output)) if value]
    for flag, value in given:
        path = Path(value)
        if path.is_dir():
            raise ConfigError(f"{flag} {value} is an existing folder; give a file path such as {path / 'submit.csv'}.")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{flag} {value}: {parent} is a file, not a folder; choose another path.")
                break
    if len(given) == 2 and os.path.realpath(args.output) == os.path.realpath(args.topk_output):
        raise ConfigError(f"--output and --topk_output both name {args.output}; the top-k file would replace the "
                          "submission: give them different paths.")


def _check_sources(args: RetrievalArguments) -> None:
    """A mistyped model or adapter path fails before the data checks, and never as a Hub error."""
    from cnclip_lora.adapter.hub import resolve_adapter
    from cnclip_lora.utils.sources import check_source

    check_source(args.model_name_or_path, option="--model_name_or_path", revision=args.model_revision)
    if args.adapter:
        resolve_adapter(args.adapter, revision=args.adapter_revision)


def _load_data(args: RetrievalArguments, **kwargs: Any) -> CompetitionData:
    _check_sources(args)
    from cnclip_lora.adapter.split_record import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE

    val_size = DEFAULT_VAL_SIZE if args.val_size is None else args.val_size
    seed = DEFAULT_SPLIT_SEED if args.split_seed is None else args.split_seed
    return load_competition_data(args.data_dir, val_size=val_size, seed=seed, **kwargs)


def _training_split(args: RetrievalArguments) -> dict[str, Any] | None:
    """The adapter's recorded split, with ``args.val_size``/``split_seed`` filled in from it
    (explicit different values refused unless ``--allow_different_split``)."""
    from cnclip_lora.adapter.split_record import recorded_split, resolve_split

    recorded = None
    if args.adapter:
        from cnclip_lora.adapter.hub import resolve_adapter

        recorded = recorded_split(resolve_adapter(args.adapter, revision=args.adapter_revision))
    args.val_size, args.split_seed = resolve_split(args.val_size, args.split_seed, recorded,
                                                   allow_different_split=args.allow_different_split,
                                                   adapter=args.adapter)
    return recorded


def retrieve(args: RetrievalArguments) -> RetrievalResult:
    """Rank the gallery (images not in train.csv) for every test query; write the requested files."""
    if args.output is None and args.topk_output is None:
        raise ConfigError("nothing to write: pass --output (submission) and/or --topk_output.")
    check_output_paths(args)
    check_device(args.device)
    data = _load_data(args, skip_bad_rows=True)  # training rows don't matter here; queries must be clean
    if len(data.gallery) == 0:
        raise CnClipLoraError(f"{data.image_dir}: the gallery is empty (every image is named in train.csv).")
    if args.assign == Assign.HUNGARIAN and len(data.queries) > len(data.gallery):
        raise CnClipLoraError(
            f"--assign hungarian needs at least as many gallery images as queries: {len(data.queries)} queries, "
            f"{len(data.gallery)} images; use --assign argmax."
        )
    model, processor, preprocessing, adapter_dir = _load_for_backend(args)
    names = list(data.gallery["path"])
    gallery_paths = [str(Path(data.image_dir) / p) for p in names]
    titles = list(data.queries["title"])
    queries, gallery = _embed_split(args, model, processor, preprocessing, adapter_dir, titles, gallery_paths)
    scores, indices = rank(queries, gallery, k=args.top_k, use_faiss=args.use_faiss,
                           **({"index_type": args.faiss_index} if args.use_faiss else {}))
    if args.assign == Assign.HUNGARIAN:  # over the whole gallery, not only the top-k file's candidates
        chosen = assign_one_to_one(queries, gallery)
    else:
        chosen = assign(scores, indices, method=args.assign, n_gallery=len(names))
    rank0 = is_main_process()
    if rank0 and args.output:
        write_submission(args.output, data.sample_submit, titles, [names[i] for i in chosen])
    if rank0 and args.topk_output:
        write_topk(args.topk_output, scores, indices, names)
    metrics: dict[str, float] = {"gallery_size": len(names), "queries": len(titles)}
    if data.answers is not None:
        labels = [int(x) for x in data.answers.sort_values("query")["label"]]
        metrics.update(prefixed_recall(indices, labels, "test_t2i_"))
        metrics["test_assigned_acc"] = float(np.mean(chosen == np.asarray(labels)) * 100)
    return RetrievalResult(chosen, scores, indices, names, metrics)


def evaluate_retrieval(args: RetrievalArguments) -> dict[str, float]:
    """Text-to-image and image-to-text R@1/5/10 + MR on a labelled set, with its gallery size.

    ``--split val``: the held-out training pairs against held-out + non-train images (the
    competition protocol; the adapter's recorded split). ``--split test``: test queries against the
    gallery, with an answers file. Scored by :class:`cnclip_lora.inference.evaluator.RetrievalEvaluator`,
    the object the Trainer evaluates with.
    """
    check_device(args.device)
    recorded = _training_split(args) if args.split == "val" else None
    split = labelled_split(args)
    if args.split == "val":
        from cnclip_lora.adapter.split_record import check_held_out

        check_held_out(recorded, [split.names[i] for i in split.labels], data_dir=args.data_dir,
                       allow_different_split=args.allow_different_split, adapter=args.adapter)
    model, processor, preprocessing, adapter_dir = _load_for_backend(args)
    return labelled_evaluator(args, split, model, processor, preprocessing, adapter_dir)(model)
