"""``retrieve`` and ``evaluate``: a submission and top-k file for the test queries, and recall on a
labelled split, through one :class:`~cnclip_lora.inference.model.RetrievalModel`.

    from cnclip_lora.retrieve import RetrieveArguments, retrieve
    result = retrieve(RetrieveArguments(model_name_or_path="OFA-Sys/chinese-clip-vit-huge-patch14",
                                        adapter="out/", data_dir="xfdata", output="prediction_result/submit.csv"))

The adapter is merged into the base weights (``merge_and_unload``), so retrieval runs at plain
model speed; the preprocessing recorded with the adapter is replayed by the model object.
Metrics always come from the exact full-gallery ranks, whatever ``--top_k`` keeps in the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnclip_lora.data import CompetitionData, load_competition_data, submission_order
from cnclip_lora.data.hf_source import DatasetSource, dataset_source
from cnclip_lora.errors import CnClipLoraError, ConfigError, DataError
from cnclip_lora.inference.evaluator import RetrievalEvaluator, prefixed_recall
from cnclip_lora.inference.model import RetrievalModel, check_device
from cnclip_lora.inference.search import assign, assign_one_to_one, rank
from cnclip_lora.options import Assign
from cnclip_lora.retrieve.arguments import EvaluateArguments, RetrieveArguments, SplitArguments
from cnclip_lora.utils.caches import usable_cache_dir
from cnclip_lora.utils.distributed import is_main_process
from cnclip_lora.utils.files import atomic_path

__all__ = [
    "EvaluateArguments",
    "LabelledSplit",
    "RetrieveArguments",
    "RetrievalResult",
    "check_output_paths",
    "evaluate_retrieval",
    "labelled_split",
    "open_model",
    "retrieve",
    "scored_split",
    "write_submission",
    "write_topk",
]

logger = logging.getLogger(__name__)


@dataclass
class RetrievalResult:
    assignment: np.ndarray  # [Q] gallery index per query
    scores: np.ndarray  # [Q, k]
    indices: np.ndarray  # [Q, k]
    gallery_paths: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def open_model(args: Any, adapter: str | None | bool = True) -> RetrievalModel:
    """The :class:`RetrievalModel` of a verb's model-source and runtime options; ``adapter`` ``True``
    takes ``args.adapter``, ``None`` the base alone, a string another adapter (``report``'s baseline)."""
    chosen = args.adapter if adapter is True else adapter
    cache_dir = None if args.cache_dir == "" else usable_cache_dir(args.cache_dir, "embeddings")
    return RetrievalModel.from_pretrained(
        args.model_name_or_path,
        chosen or None,
        model_revision=args.model_revision,
        adapter_revision=args.adapter_revision if chosen == args.adapter else None,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        allow_different_base=args.allow_different_base,
        cache_dir=cache_dir,
        batch_size=args.batch_size,
    )


@dataclass
class LabelledSplit:
    """A labelled query set: ``labels[i]`` is the index in ``names`` of query ``i``'s true image, or
    the list of its relevant images (several per query in Chinese-CLIP's layout)."""

    titles: list[str]
    labels: list[int] | list[list[int]]
    names: list[str]
    image_dir: Path
    name: str = "val"
    #: Every title the data pairs with a gallery image (what the report shows beside a candidate).
    known_titles: dict[str, list[str]] = field(default_factory=dict)
    #: The source's own ids (Chinese-CLIP's text_id per title, image_id per gallery name); ``None``:
    #: the 0-based row numbers stand in for them.
    text_ids: list[int] | None = None
    image_ids: dict[str, int] | None = None
    #: The held-out split's relevant images as the run record names them
    #: (:meth:`CompetitionData.held_out_images`); empty for the test split.
    held_out: list[str] = field(default_factory=list)

    def positives(self) -> list[list[int]]:
        from cnclip_lora.inference.metrics import positive_list

        return [positive_list(x) for x in self.labels]

    @property
    def gallery_paths(self) -> list[str]:
        return [str(self.image_dir / n) for n in self.names]

    def evaluator(self, *, name: str | None = None, batch_size: int = 64) -> RetrievalEvaluator:
        """The :class:`RetrievalEvaluator` of this split (metrics named ``{name}_t2i_R@1``)."""
        return RetrievalEvaluator(
            self.titles,
            self.labels,
            self.gallery_paths,
            name=self.name if name is None else name,
            batch_size=batch_size,
        )


def labelled_split(
    data_dir: str,
    split: str,
    *,
    val_size: float,
    split_seed: int,
    answers: str | None = None,
    dataset: DatasetSource | None = None,
) -> LabelledSplit:
    """The held-out split (``split="val"``) or the test queries with an answers file (``"test"``),
    validated before any model is loaded."""
    data = load_competition_data(
        data_dir,
        val_size=val_size,
        seed=split_seed,
        skip_bad_rows=True,
        require_queries=split == "test",
        answers_file=answers,
        use_answers=split == "test" or answers is not None,
        dataset=dataset,
    )
    data.warn_left_out()
    if split == "val":
        if len(data.val) == 0:
            raise ConfigError("--split val needs a validation split: --val_size must be > 0.")
        return LabelledSplit(
            list(data.val["title"]),
            data.val_labels(),
            list(data.val_gallery["path"]),
            Path(data.image_dir),
            "val",
            data.titles_by_image(),
            data.ids["val_text"] if data.ids else None,
            data.ids["val_image"] if data.ids else None,
            data.held_out_images(),
        )
    if data.answers is None:
        if data.report.layout == "chinese-clip":
            raise ConfigError(f"--split test needs answers: {data_dir}/test_texts.jsonl gives its texts no image_ids.")
        raise ConfigError(
            f"--split test needs answers: {Path(data_dir) / 'test_answers.csv'} is missing; pass --answers FILE."
        )
    titles = list(data.queries["title"])
    labels = data.answer_labels()
    if len(labels) != len(titles):
        raise CnClipLoraError(f"the answers file has {len(labels)} rows for {len(titles)} queries.")
    return LabelledSplit(
        titles,
        labels,
        list(data.gallery["path"]),
        Path(data.image_dir),
        "test",
        data.titles_by_image(),
        data.ids["test_text"] if data.ids else None,
        data.ids["test_image"] if data.ids else None,
    )


def scored_split(args: SplitArguments, adapter: str | None, adapter_revision: str | None = None) -> LabelledSplit:
    """The labelled set ``evaluate`` and ``report`` score: for ``--split val`` the adapter's
    *recorded* training split (an explicit other split only with ``--allow_different_split``), and
    the held-out images checked against the ones training validated on."""
    from cnclip_lora.adapter.split_record import (
        DEFAULT_SPLIT_SEED,
        DEFAULT_VAL_SIZE,
        check_held_out,
        recorded_split,
        resolve_split,
    )

    if args.split == "test":
        size = DEFAULT_VAL_SIZE if args.val_size is None else args.val_size
        seed = DEFAULT_SPLIT_SEED if args.split_seed is None else args.split_seed
        return labelled_split(
            args.data_dir, "test", val_size=size, split_seed=seed, answers=args.answers, dataset=dataset_source(args)
        )
    recorded = None
    if adapter:
        from cnclip_lora.adapter.hub import resolve_adapter

        recorded = recorded_split(resolve_adapter(adapter, revision=adapter_revision))
    size, seed = resolve_split(
        args.val_size, args.split_seed, recorded, allow_different_split=args.allow_different_split, adapter=adapter
    )
    split = labelled_split(
        args.data_dir, "val", val_size=size, split_seed=seed, answers=args.answers, dataset=dataset_source(args)
    )
    check_held_out(
        recorded,
        split.held_out,
        data_dir=args.data_dir,
        allow_different_split=args.allow_different_split,
        adapter=adapter,
    )
    return split


def write_submission(
    path: str | os.PathLike, sample_submit: pd.DataFrame | None, titles: Sequence[str], chosen_paths: Sequence[str]
) -> Path:
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
    frame = pd.DataFrame(
        {
            "query": np.repeat(np.arange(q), k),
            "rank": np.tile(np.arange(1, k + 1), q),
            "path": [gallery_paths[i] for i in indices.reshape(-1)],
            "score": np.round(scores.reshape(-1).astype(np.float64), 6),
        }
    )
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
    return Path(path)


def check_output_paths(outputs: Sequence[tuple[str, str | None]]) -> None:
    """Refuse output paths (``(flag, path)``; ``None`` paths are not asked for) that cannot be
    written, or that clash, before any work is done.

    Raises:
        ConfigError: An output is an existing folder, lies under an existing file, or two flags
            name the same file (the second would replace the first).
    """
    given = [(flag, value) for flag, value in outputs if value]
    for flag, value in given:
        path = Path(value)
        if path.is_dir():
            raise ConfigError(f"{flag} {value} is an existing folder; give a file path such as {path / 'out.csv'}.")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{flag} {value}: {parent} is a file, not a folder; choose another path.")
                break
    seen: dict[str, str] = {}
    for flag, value in given:
        real = os.path.realpath(value)
        if real in seen:
            raise ConfigError(
                f"{seen[real]} and {flag} both name {value}; the second file would replace the first: "
                "give them different paths."
            )
        seen[real] = flag


def retrieve(args: RetrieveArguments) -> RetrievalResult:
    """Rank the gallery (images not in train.csv) for every test query; write the requested files.

    With an answers file beside the data, ``test_t2i_*`` metrics are computed from the full-gallery
    ranks, so they do not depend on ``top_k``.
    """
    if not isinstance(args, RetrieveArguments):
        raise TypeError(f"retrieve() takes RetrieveArguments, got {type(args).__name__}")
    if args.output is None and args.topk_output is None:
        raise ConfigError("nothing to write: pass --output (submission) and/or --topk_output.")
    check_output_paths([("--output", args.output), ("--topk_output", args.topk_output)])
    check_device(args.device)
    args.check_sources()
    data = _load_test_data(args)
    model = open_model(args)
    names = list(data.gallery["path"])
    gallery_paths = [str(Path(data.image_dir) / p) for p in names]
    titles = list(data.queries["title"])
    gallery = model.encode_images(gallery_paths)
    queries = model.encode_texts(titles)
    scores, indices = rank(
        queries,
        gallery,
        k=args.top_k,
        use_faiss=args.use_faiss,
        **({"index_type": args.faiss_index} if args.use_faiss else {}),
    )
    if args.assign == Assign.HUNGARIAN:  # over the whole gallery, not only the top-k file's candidates
        chosen = assign_one_to_one(queries, gallery)
    else:
        chosen = assign(scores, indices, method=args.assign, n_gallery=len(names))
    if data.ids:  # a layout with its own image ids (Chinese-CLIP's): the files name images by them
        names = [str(data.ids["test_image"][n]) for n in names]
    if is_main_process():
        if args.output:
            write_submission(args.output, data.sample_submit, titles, [names[i] for i in chosen])
        if args.topk_output:
            write_topk(args.topk_output, scores, indices, names)
    metrics: dict[str, float] = {"gallery_size": len(names), "queries": len(titles)}
    if data.answers is not None:
        from cnclip_lora.inference.metrics import true_ranks

        labels = data.answer_labels()
        metrics.update(prefixed_recall(true_ranks(queries, gallery, labels), "test_t2i_"))
        from cnclip_lora.inference.metrics import positive_list

        hits = [int(c) in positive_list(lab) for c, lab in zip(chosen, labels)]
        metrics["test_assigned_acc"] = float(np.mean(hits) * 100)
    return RetrievalResult(chosen, scores, indices, names, metrics)


def _load_test_data(args: RetrieveArguments) -> CompetitionData:
    from cnclip_lora.adapter.split_record import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE
    from cnclip_lora.data.dataset import answers_problem

    # Training rows do not matter here (skipped if bad); the queries must be clean; the answers
    # only give the optional test metrics.
    common = dict(val_size=DEFAULT_VAL_SIZE, seed=DEFAULT_SPLIT_SEED, skip_bad_rows=True, dataset=dataset_source(args))
    try:
        data = load_competition_data(args.data_dir, **common)
    except DataError as err:
        if (problem := answers_problem(err)) is None:
            raise
        logger.warning("no test metrics: the answers file is not usable (%s)", problem)
        data = load_competition_data(args.data_dir, **common, use_answers=False)
    data.warn_left_out()
    if len(data.gallery) == 0:
        raise CnClipLoraError(f"{data.image_dir}: the gallery is empty (every image is named in train.csv).")
    if args.assign == Assign.HUNGARIAN and len(data.queries) > len(data.gallery):
        raise CnClipLoraError(
            f"--assign hungarian needs at least as many gallery images as queries: {len(data.queries)} queries, "
            f"{len(data.gallery)} images; use --assign argmax."
        )
    return data


def evaluate_retrieval(args: EvaluateArguments) -> dict[str, float]:
    """Text-to-image and image-to-text R@1/5/10 + MR on a labelled set, with its gallery size.

    ``--split val``: the held-out training pairs against held-out + non-train images (the
    competition protocol; the adapter's recorded split). ``--split test``: test queries against the
    gallery, with an answers file. Scored by :class:`~cnclip_lora.inference.evaluator.RetrievalEvaluator`,
    the object the Trainer evaluates with.
    """
    if not isinstance(args, EvaluateArguments):
        raise TypeError(f"evaluate_retrieval() takes EvaluateArguments, got {type(args).__name__}")
    check_device(args.device)
    args.check_sources()
    split = scored_split(args, args.adapter, args.adapter_revision)
    outputs = [
        ("--predictions_output", args.predictions_output),
        ("--i2t_predictions_output", args.i2t_predictions_output),
    ]
    check_output_paths(outputs)
    if (args.predictions_output and len(split.names) < OFFICIAL_K) or (
        args.i2t_predictions_output and len(split.titles) < OFFICIAL_K
    ):
        raise ConfigError(f"the official prediction files list {OFFICIAL_K} results each: the split is smaller.")
    model = open_model(args)
    evaluator = split.evaluator(batch_size=args.batch_size)
    queries, gallery = evaluator.embed(model)
    if is_main_process():
        if args.predictions_output:
            write_official_predictions(args.predictions_output, split, queries, gallery, "t2i")
        if args.i2t_predictions_output:
            write_official_predictions(args.i2t_predictions_output, split, queries, gallery, "i2t")
    return evaluator.score(queries, gallery)


#: The official evaluation scripts' cut-off: every prediction line lists exactly this many ids.
OFFICIAL_K = 10


def write_official_predictions(
    path: str | os.PathLike, split: LabelledSplit, queries: np.ndarray, gallery: np.ndarray, direction: str
) -> Path:
    """The official prediction file (atomically): ``t2i`` one ``{"text_id", "image_ids"}`` line per
    text, ``i2t`` one ``{"image_id", "text_ids"}`` line per image that some text names as relevant
    (the images ``transform_ir_annotation_to_tr.py`` keeps), each with its top 10 best first.
    Ids are the source's own (Chinese-CLIP's), else the 0-based row numbers."""
    import json

    from cnclip_lora.inference.search import rank

    text_ids = split.text_ids or list(range(len(split.titles)))
    image_ids = [split.image_ids[n] for n in split.names] if split.image_ids else list(range(len(split.names)))
    lines = []
    if direction == "t2i":
        _, top = rank(queries, gallery, k=OFFICIAL_K)
        for q, row in enumerate(top):
            lines.append({"text_id": int(text_ids[q]), "image_ids": [int(image_ids[i]) for i in row]})
    else:
        relevant = sorted({g for p in split.positives() for g in p})
        _, top = rank(gallery[relevant], queries, k=OFFICIAL_K)
        for g, row in zip(relevant, top):
            lines.append({"image_id": int(image_ids[g]), "text_ids": [int(text_ids[i]) for i in row]})
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return Path(path)
