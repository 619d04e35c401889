"""The option groups of the retrieval verbs, each declared once and shared by every verb that takes it.

``retrieve``, ``evaluate``, ``report`` and ``serve`` each have one arguments dataclass built from
these groups (model source, runtime, data and split), so an option means the same, with the same
help and checks, in each of them; ``HfArgumentParser`` turns a dataclass into the verb's flags.
A verb's dataclass holds only the options that verb uses: a field of another verb is a
``TypeError`` in Python and an unknown flag on the command line, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cnclip_lora.data.hf_source import DatasetOptions
from cnclip_lora.errors import ConfigError
from cnclip_lora.options import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    Assign,
    Backend,
    FaissIndex,
    check_backend_options,
    choices,
    parse_choice,
)

__all__ = [
    "SPLITS",
    "DataDirArguments",
    "EvaluateArguments",
    "ExportArguments",
    "ModelSourceArguments",
    "ReportArguments",
    "RetrieveArguments",
    "RuntimeArguments",
    "ServeArguments",
    "SplitArguments",
]

#: The labelled sets ``evaluate`` and ``report`` score.
SPLITS = ("val", "test")

#: Host names that mean this machine only.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Group:
    """Cooperative ``__post_init__``: every group of a verb's dataclass runs its own checks."""

    def __post_init__(self) -> None:
        pass


@dataclass
class ModelSourceArguments(_Group):
    """Which model: a base checkpoint, an optional adapter, their revisions."""

    model_name_or_path: str = field(
        metadata={
            "help": "Base Chinese-CLIP checkpoint (Hub id or local folder); with --backend onnx an "
            "`export-onnx` folder."
        }
    )
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder or Hub id; none = the base model (zero-shot baseline)."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit of the base model."})
    adapter_revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit of the adapter."})
    allow_different_base: bool = field(
        default=False,
        metadata={
            "help": "Use the adapter on a base with the same architecture but other weights or vocabulary "
            "than it was trained on (a re-saved or converted copy of that base; a deliberate "
            "transfer experiment). Off: such a pair is refused, since its rankings are silently wrong."
        },
    )

    def check_sources(self) -> None:
        """A mistyped model or adapter path fails at once, before the data checks and any heavy
        import, and never as a Hub error."""
        from cnclip_lora.utils.sources import check_source

        check_source(self.model_name_or_path, option="--model_name_or_path", revision=self.model_revision)
        if self.adapter:
            from cnclip_lora.adapter.hub import resolve_adapter

            resolve_adapter(self.adapter, revision=self.adapter_revision)


@dataclass
class RuntimeArguments(_Group):
    """Where and how the model runs, and where its embeddings are cached."""

    backend: str = field(
        default=Backend.TORCH,
        metadata={
            "help": "torch: the checkpoint (+ merged adapter). onnx: onnxruntime over a `cnclip-lora "
            "export-onnx` folder given as --model_name_or_path (onnx extra).",
            "choices": choices(Backend),
        },
    )
    device: str | None = field(default=None, metadata={"help": "cuda, cpu...; default: cuda when available."})
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16 for the model."})
    batch_size: int = field(default=64, metadata={"help": "Embedding batch size."})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Embedding cache folder (keyed by model, adapter, processor, images, preprocessing); "
            "default: HF_DATASETS_CACHE/cnclip_lora/embeddings (see `cnclip-lora cache`); '' disables."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.backend = parse_choice(Backend, self.backend, "--backend")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1; got {self.batch_size}.")
        check_backend_options(self.backend, getattr(self, "adapter", None), self.dtype)


@dataclass
class DataDirArguments(DatasetOptions, _Group):
    data_dir: str = field(
        default="xfdata",
        metadata={"help": "Data folder: the competition layout, or Chinese-CLIP's (jsonl + tsv, or its lmdb/)."},
    )


@dataclass
class SplitArguments(DataDirArguments):
    """Which labelled set is scored, and how the held-out split is drawn."""

    split_choices: ClassVar[tuple[str, ...]] = SPLITS

    split: str = field(
        default="val",
        metadata={
            "help": "'val' (held-out split; 'valid' in Chinese-CLIP's layout) or 'test' (queries with answers).",
            "choices": [*SPLITS, "valid"],
        },
    )
    answers: str | None = field(
        default=None, metadata={"help": "--split test: answers CSV (query,path); default DATA_DIR/test_answers.csv."}
    )
    val_size: float | None = field(
        default=None,
        metadata={
            "help": "--split val: held-out share or count. Default: the adapter's recorded training "
            "split (0.1 without a record); a different value needs --allow_different_split."
        },
    )
    split_seed: int | None = field(
        default=None,
        metadata={"help": "--split val: split seed. Default: the adapter's recorded one (42 without)."},
    )
    allow_different_split: bool = field(
        default=False,
        metadata={
            "help": "--split val: accept a split other than the adapter's training split (its held-out "
            "recall then includes trained-on images)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split == "valid":  # Chinese-CLIP's name for its held-out split
            self.split = "val"
        if self.split not in self.split_choices:
            raise ConfigError(f"--split must be one of {', '.join(self.split_choices)}; got {self.split!r}.")


# ---------------------------------------------------------------- the verbs


@dataclass
class RetrieveArguments(DataDirArguments, RuntimeArguments, ModelSourceArguments):
    """``cnclip-lora retrieve``: rank the gallery for the test queries and write the files."""

    output: str | None = field(
        default=None, metadata={"help": "Submission CSV (sample_submit.csv's columns and order)."}
    )
    top_k: int = field(
        default=10,
        metadata={
            "help": "Results kept per query in the top-k file (metrics and the one-to-one assignment use the "
            "whole gallery)."
        },
    )
    topk_output: str | None = field(default=None, metadata={"help": "CSV with query,rank,path,score for the top-k."})
    assign: str = field(
        default=Assign.ARGMAX,
        metadata={
            "help": "argmax: best image per query. hungarian: one distinct image per query, maximising total "
            "similarity over the whole gallery.",
            "choices": choices(Assign),
        },
    )
    use_faiss: bool = field(default=False, metadata={"help": "Rank with a FAISS inner-product index (faiss extra)."})
    faiss_index: str = field(
        default=FaissIndex.FLAT,
        metadata={"help": "flat (exact) | hnsw | ivf (approximate, faster).", "choices": choices(FaissIndex)},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.assign = parse_choice(Assign, self.assign, "--assign")
        self.faiss_index = parse_choice(FaissIndex, self.faiss_index, "--faiss_index")
        if self.top_k < 1:
            raise ConfigError(f"--top_k must be >= 1; got {self.top_k}.")


@dataclass
class EvaluateArguments(SplitArguments, RuntimeArguments, ModelSourceArguments):
    """``cnclip-lora evaluate``: Recall@1/5/10 and MR on a labelled split."""

    predictions_output: str | None = field(
        default=None,
        metadata={
            "help": "Also write the top-10 images of every text in the official format "
            '({"text_id": ..., "image_ids": [...]} per line), which cn_clip/eval/evaluation.py scores.'
        },
    )
    i2t_predictions_output: str | None = field(
        default=None,
        metadata={
            "help": 'The same for image-to-text ({"image_id": ..., "text_ids": [...]}; cn_clip/eval/evaluation_tr.py).'
        },
    )


@dataclass
class ReportArguments(SplitArguments, RuntimeArguments, ModelSourceArguments):
    """``cnclip-lora report``: the split scored exactly as ``evaluate`` scores it (the adapter's
    recorded training split by default), with the model-source and runtime options of every verb."""

    split_choices: ClassVar[tuple[str, ...]] = ("all", *SPLITS)

    split: str = field(
        default="all",
        metadata={
            "help": "all: the held-out split, and the test queries too when an answers file exists; "
            "or only 'val' or 'test'.",
            "choices": ["all", *SPLITS, "valid"],
        },
    )
    baseline_adapter: str | None = field(
        default=None, metadata={"help": "Compare with this second adapter (fixed/broken queries are relative to it)."}
    )
    compare_base: bool = field(default=False, metadata={"help": "Compare with the base model without adapter."})
    output: str = field(default="report.html", metadata={"help": "The HTML file to write."})
    top_k: int = field(default=5, metadata={"help": "Thumbnails shown per query and model."})
    max_queries: int = field(
        default=500, metadata={"help": "Query rows kept per split (worst first); metrics use all queries."}
    )
    page_size: int = field(default=25, metadata={"help": "Query rows per page of the page's lists."})
    thumb_size: int = field(default=96, metadata={"help": "Thumbnail edge in pixels."})
    training_dir: str | None = field(
        default=None, metadata={"help": "Folder with trainer_state.json for the curves; default: the adapter folder."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("top_k", "max_queries", "page_size", "thumb_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1; got {getattr(self, name)}.")
        if self.compare_base and self.baseline_adapter:
            raise ConfigError("pass either --compare_base or --baseline_adapter, not both.")
        if self.compare_base and not self.adapter:
            raise ConfigError("--compare_base needs --adapter (otherwise both models are the base model).")
        if self.backend == Backend.ONNX and (self.compare_base or self.baseline_adapter):
            raise ConfigError(
                "--backend onnx serves one export folder: --compare_base/--baseline_adapter need the torch backend."
            )
        if not self.output.lower().endswith((".html", ".htm")):
            raise ConfigError(f"--output must be an .html file; got {self.output!r}.")

    def report_splits(self) -> list[str]:
        """The splits the page shows: ``--split all`` adds the test queries when they have answers."""
        if self.split != "all":
            return [self.split]
        from cnclip_lora.data.cnclip_layout import is_cnclip_layout

        # Chinese-CLIP's layout: its test texts may carry image_ids (then they are shown).
        answered = (
            self.answers
            or self.dataset_name
            or (Path(self.data_dir) / "test_answers.csv").is_file()
            or is_cnclip_layout(self.data_dir)
        )
        return ["val", "test"] if answered else ["val"]


@dataclass
class ServeArguments(DataDirArguments, RuntimeArguments, ModelSourceArguments):
    """``cnclip-lora serve``: the model-source, runtime and data options of the other verbs, plus these."""

    image_dir: str | None = field(
        default=None, metadata={"help": "Serve every image in this folder instead of the competition gallery."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (loopback by default)."})
    port: int = field(default=8000, metadata={"help": "Port."})
    max_k: int = field(default=100, metadata={"help": "Largest k a request may ask for."})
    max_batch: int = field(default=64, metadata={"help": "Most queries embedded in one forward pass (and per POST)."})
    batch_wait_ms: float = field(default=5.0, metadata={"help": "How long the batcher waits for more queries."})
    max_query_chars: int = field(default=1000, metadata={"help": "Longest query accepted, in characters."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest POST body accepted, in bytes."})
    allowed_hosts: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated Host names the service answers besides the loopback names and --host "
            "(a page on another site reaching the service through DNS rebinding is refused)."
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Require this key (header X-API-Key, or ?key= on the page) on every request. Needed "
            "when --host is not a loopback address, unless --no_api_key true."
        },
    )
    no_api_key: bool = field(
        default=False, metadata={"help": "Serve on a non-loopback --host without an API key (anyone who reaches it)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1..65535; got {self.port}.")
        for name in ("max_k", "max_batch", "max_query_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1; got {getattr(self, name)}.")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch_wait_ms must be >= 0; got {self.batch_wait_ms}.")
        if not is_loopback(self.host) and not self.api_key and not self.no_api_key:
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: pass --api_key KEY (clients send it as "
                "X-API-Key), or --no_api_key true to serve without one."
            )

    @property
    def hosts(self) -> list[str]:
        """Host names the service answers (the Host header, port left out)."""
        extra = [h.strip() for h in (self.allowed_hosts or "").split(",") if h.strip()]
        return list(dict.fromkeys([*LOOPBACK_NAMES, self.host, *extra]))


@dataclass
class ExportArguments(ModelSourceArguments):
    """``cnclip-lora export-onnx``: the model-source options of every verb, the folder and the opset."""

    out_dir: str = field(
        default="",
        metadata={
            "help": "folder to write (text_model.onnx, vision_model.onnx, processor, record)",
            "positional": True,
        },
    )
    opset: int = field(
        default=DEFAULT_OPSET,
        metadata={"help": f"ONNX opset version, {MIN_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET})."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty OUT_DIR."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.out_dir:
            raise ConfigError("export-onnx needs OUT_DIR, the folder to write the export into.")
        if isinstance(self.opset, bool) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"--opset must be {MIN_OPSET} to {MAX_OPSET} (attention needs {MIN_OPSET}; torch's TorchScript "
                f"exporter writes at most {MAX_OPSET}); got {self.opset!r}."
            )
