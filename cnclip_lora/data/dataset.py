"""The validated data folder as ``datasets.Dataset`` splits, ready for the collator, trainer and retrieval."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cnclip_lora.data.checks import scan_folder
from cnclip_lora.data.report import DataReport, error_message
from cnclip_lora.errors import DataError
from cnclip_lora.inference.metrics import positive_list
from cnclip_lora.options import DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE

if TYPE_CHECKING:
    import datasets

    from cnclip_lora.data.hf_source import DatasetSource

__all__ = ["CompetitionData", "answers_problem", "load_competition_data"]

logger = logging.getLogger(__name__)


@dataclass
class CompetitionData:
    """The validated data folder, ready for the collator, trainer and retrieval.

    ``train``/``val`` rows have ``title``, ``path`` (relative to ``image_dir``) and ``row``
    (0-based data row in train.csv); ``val`` adds ``label``, the index of its image in
    ``val_gallery``. ``answers`` (demo data only) has ``label`` = index into ``gallery``.
    """

    root: Path
    image_dir: Path
    train: datasets.Dataset
    val: datasets.Dataset
    queries: datasets.Dataset
    gallery: datasets.Dataset
    val_gallery: datasets.Dataset
    sample_submit: pd.DataFrame | None
    answers: pd.DataFrame | None
    report: DataReport
    #: Several relevant images per held-out title (Chinese-CLIP's layout); ``None``: ``val["label"]``.
    val_labels_override: list[list[int]] | None = None
    #: The source's own ids (Chinese-CLIP's ``text_id``/``image_id``), for the official prediction files.
    ids: dict | None = None

    def val_labels(self) -> list[int] | list[list[int]]:
        """Each held-out title's relevant image(s), as indices into ``val_gallery``."""
        if self.val_labels_override is not None:
            return self.val_labels_override
        return [int(x) for x in self.val["label"]]

    def held_out_images(self) -> list[str]:
        """The held-out images as the run record names them: file names, or the source's own
        image ids (stable however its images are cached)."""
        names = list(self.val_gallery["path"])
        by_id = (self.ids or {}).get("val_image")
        labels = self.val_labels()
        relevant = {names[i] for lab in labels for i in positive_list(lab)}
        return sorted(str(by_id[n]) if by_id else n for n in relevant)

    def answer_labels(self) -> list[int] | list[list[int]]:
        """Each test query's relevant image(s), as indices into ``gallery`` (needs ``answers``)."""
        frame = self.answers.sort_values("query")
        if "labels" in frame.columns:
            return [list(x) for x in frame["labels"]]
        return [int(x) for x in frame["label"]]

    def warn_left_out(self) -> None:
        """One warning naming the training rows skipped and the images left out of the gallery
        (``skip_bad_rows``), and why: the verbs that go on without them never do so silently."""
        left = [p for p in self.report.problems if "(excluded" in p.message or "(row skipped)" in p.message]
        if not left:
            return
        rows = sum("(row skipped)" in p.message for p in left)
        logger.warning(
            "%d training row(s) skipped and %d image(s) left out of the gallery: %s%s",
            rows,
            len(left) - rows,
            "; ".join(str(p) for p in left[:5]),
            f"; ... ({len(left)} in all: `cnclip-lora check-data` lists them)" if len(left) > 5 else "",
        )

    def titles_by_image(self) -> dict[str, list[str]]:
        """Every title the data pairs with each image (train.csv rows, and the test queries an
        answers file points at): what a page can show beside an image."""
        known: dict[str, list[str]] = {}
        for split in (self.train, self.val):
            for title, path in zip(split["title"], split["path"]):
                known.setdefault(path, []).append(title)
        if self.answers is not None:
            titles = list(self.queries["title"])
            names = list(self.gallery["path"])
            for query, labels in enumerate(self.answer_labels()):
                for label in positive_list(labels):
                    known.setdefault(names[int(label)], []).append(titles[query])
        return known


#: Column types by name (``datasets.Value`` dtypes); datasets is imported only when a split is built.
_STR, _INT = "string", "int64"


def _dataset(columns: dict[str, list], types: dict[str, str]) -> datasets.Dataset:
    import datasets

    features = datasets.Features({name: datasets.Value(dtype) for name, dtype in types.items()})
    return datasets.Dataset.from_dict(columns, features=features)


def _pairs(rows: list[tuple[str, str, int]], label_of: dict[str, int] | None = None) -> datasets.Dataset:
    """``(title, path, row)`` rows as a Dataset; with ``label_of``, each row's ``label`` is its image's index."""
    columns = {"title": [t for t, _, _ in rows], "path": [p for _, p, _ in rows], "row": [r for _, _, r in rows]}
    types = {"title": _STR, "path": _STR, "row": _INT}
    if label_of is not None:
        columns["label"], types["label"] = [label_of[p] for _, p, _ in rows], _INT
    return _dataset(columns, types)


def other_source_reader(
    data_dir: str | os.PathLike, dataset: DatasetSource | None
) -> Callable[..., CompetitionData] | None:
    """The reader of a source other than the competition layout, or ``None`` for that layout: a
    ``datasets`` dataset (``--dataset_name``, or an imagefolder / saved dataset as ``data_dir``),
    else Chinese-CLIP's layout. The one place that picks the reader (stated in the log); the
    readers take the check options as keywords."""
    import functools

    from cnclip_lora.data.cnclip_layout import is_cnclip_layout, load_cnclip_data
    from cnclip_lora.data.hf_source import DatasetSource, is_datasets_folder, load_hf_data

    if dataset is None and data_dir and is_datasets_folder(data_dir):
        dataset = DatasetSource(str(data_dir))
    if dataset is not None:
        logger.info("%s: a datasets dataset", dataset.name)
        return functools.partial(load_hf_data, dataset)
    if is_cnclip_layout(data_dir):
        logger.info("%s: Chinese-CLIP's layout ({split}_texts.jsonl + {split}_imgs.tsv, or its lmdb/)", data_dir)
        return functools.partial(load_cnclip_data, data_dir)
    return None


def load_competition_data(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int = DEFAULT_VAL_SIZE,
    seed: int = DEFAULT_SPLIT_SEED,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    answers_file: str | os.PathLike | None = None,
    use_answers: bool = True,
    dataset: DatasetSource | None = None,
) -> CompetitionData:
    """Validate a competition data folder and return its splits as ``datasets.Dataset``s.

    Everything is checked before returning (and so before any model is loaded); all fatal
    problems are raised together.

    Args:
        data_dir: Folder with ``train.csv``, ``test_query.csv``, ``image/`` and optionally
            ``sample_submit.csv`` and ``test_answers.csv``.
        val_size: Share of training *images* to hold out, in (0, 1), or a whole number of
            images; 0 disables validation. All captions of an image land on the same side,
            and the split depends only on ``(seed, val_size)`` and the set of usable images,
            not on row order.
        seed: Seed of the validation split.
        skip_bad_rows: Skip bad training rows (empty title, bad path, missing or corrupt
            image, duplicate) and corrupt gallery images instead of failing; every skip is
            reported. Problems in ``test_query.csv``/``sample_submit.csv`` stay fatal.
        check_images: Decode every training and gallery image (at reduced JPEG size). False
            only checks that files exist, for speed on huge sets.
        require_queries: Whether ``test_query.csv`` must exist (it is checked when present).
        num_workers: Threads used to decode images (default: twice the CPU count, at most 16).
        answers_file: An answers CSV (``query,path``) to use instead of ``test_answers.csv``,
            validated like it (``cnclip-lora evaluate --split test --answers FILE``).
        dataset: a :class:`~cnclip_lora.data.hf_source.DatasetSource` (``--dataset_name``), read
            instead of ``data_dir``.
        use_answers: ``False`` to leave the answers file unread (``answers`` is then ``None``):
            what scores only the held-out split is not stopped by a problem in it.

    Returns:
        A :class:`CompetitionData`.

    Raises:
        DataError: With ``.problems`` listing every fatal problem.
        ConfigError: ``val_size`` is invalid or leaves no training image.
    """
    reader = other_source_reader(data_dir, dataset)
    if reader is not None:
        return reader(
            skip_bad_rows=skip_bad_rows,
            check_images=check_images,
            require_queries=require_queries,
            num_workers=num_workers,
            use_answers=use_answers,
        )
    scan = scan_folder(
        data_dir,
        val_size=val_size,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        check_images=check_images,
        require_queries=require_queries,
        num_workers=num_workers,
        answers_file=answers_file,
        use_answers=use_answers,
    )
    report = scan.report
    if not report.ok:
        raise DataError(error_message(str(data_dir), report.problems), report.fatal_problems)

    held = set(scan.held_out)
    val_gallery = scan.held_out + [p for p in scan.gallery if p not in held] if held else []
    val_index = {p: i for i, p in enumerate(val_gallery)}
    return CompetitionData(
        root=scan.root,
        image_dir=scan.image_dir,
        train=_pairs([r for r in scan.train if r[1] not in held]),
        val=_pairs([r for r in scan.train if r[1] in held], label_of=val_index),
        queries=_dataset(
            {"title": scan.queries, "query": list(range(len(scan.queries)))}, {"title": _STR, "query": _INT}
        ),
        gallery=_dataset({"path": scan.gallery}, {"path": _STR}),
        val_gallery=_dataset({"path": val_gallery}, {"path": _STR}),
        sample_submit=scan.sample_submit,
        answers=scan.answers,
        report=report,
    )


def answers_problem(err: DataError) -> Any:
    """The first problem of ``err`` when all of its problems are in the answers file, else ``None``:
    a verb that only shows test scores when it can may then go on without them, saying so."""
    problems = getattr(err, "problems", None) or []
    if problems and all(Path(p.file).name == "test_answers.csv" for p in problems):
        return problems[0]
    return None
