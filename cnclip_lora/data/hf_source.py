"""Any ``datasets`` dataset as the package's data: a Hub id, a local folder (``imagefolder`` with
``metadata.jsonl``/``metadata.csv``, data files, or a ``save_to_disk`` folder) or one CSV/JSON/
Parquet file, in ``run_clip.py``'s vocabulary (``--dataset_name``, ``--image_column``,
``--caption_column``, ...).

Each row is a caption and an image: an image column of paths, or an ``Image`` feature (read
undecoded: a file it points at is used as it is, embedded bytes are written once into the
``images`` cache), so every image takes the one image path. Splits: ``train_split`` trains,
``validation_split`` is the held-out split, ``test_split`` the queries and gallery; a
``group_column`` says which rows share a target (they are each other's positives, never
negatives); without one, rows of the same image do.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnclip_lora.data.report import Problem
from cnclip_lora.errors import CnClipLoraError

__all__ = ["DatasetOptions", "DatasetSource", "dataset_source", "is_datasets_folder", "load_hf_data"]

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DatasetOptions:
    """The data-source options of every verb that reads data (``run_clip.py``'s names); with
    ``dataset_name`` set they replace ``--data_dir``."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A datasets dataset instead of --data_dir: Hub id, local folder or CSV/JSON/Parquet file."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "--dataset_name: its configuration."})
    image_column: str = field(default="image", metadata={"help": "--dataset_name: image paths or Image feature."})
    caption_column: str = field(default="caption", metadata={"help": "--dataset_name: the caption column."})
    group_column: str | None = field(
        default=None, metadata={"help": "--dataset_name: rows with one value share a target (default: same image)."}
    )
    train_split: str = field(default="train", metadata={"help": "--dataset_name: the training split."})
    validation_split: str = field(default="validation", metadata={"help": "--dataset_name: the held-out split."})
    test_split: str = field(default="test", metadata={"help": "--dataset_name: the test split (queries, gallery)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "--dataset_name: first N training rows."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "--dataset_name: first N rows of the held-out and test splits."}
    )


@dataclass
class DatasetSource:
    """Where the rows come from and which columns and splits mean what."""

    name: str
    config: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    group_column: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


def is_datasets_folder(root: str | os.PathLike) -> bool:
    """A ``--data_dir`` that is a ``datasets`` folder: an ``imagefolder`` (``metadata.jsonl`` /
    ``metadata.csv`` at the top or in its split folders) or a ``save_to_disk`` folder."""
    root = Path(root)
    if not root.is_dir() or (root / "train.csv").exists():
        return False
    marks = ("metadata.jsonl", "metadata.csv", "dataset_dict.json", "state.json")
    return any((root / m).is_file() or (root / "train" / m).is_file() for m in marks)


def dataset_source(args: Any) -> DatasetSource | None:
    """The :class:`DatasetSource` an arguments object names (``--dataset_name`` ...), or ``None``."""
    name = getattr(args, "dataset_name", None)
    if not name:
        return None
    return DatasetSource(
        name=name,
        config=getattr(args, "dataset_config_name", None),
        image_column=getattr(args, "image_column", "image"),
        caption_column=getattr(args, "caption_column", "caption"),
        group_column=getattr(args, "group_column", None),
        train_split=getattr(args, "train_split", "train"),
        validation_split=getattr(args, "validation_split", "validation"),
        test_split=getattr(args, "test_split", "test"),
        max_train_samples=getattr(args, "max_train_samples", None),
        max_eval_samples=getattr(args, "max_eval_samples", None),
    )


def _open(source: DatasetSource) -> tuple[Any, Path | None]:
    """The dataset's splits (a ``DatasetDict``) and the folder relative image paths are read from."""
    import datasets

    from cnclip_lora.utils.log_setup import library_bars_follow_terminal

    library_bars_follow_terminal()
    path = Path(source.name).expanduser()
    try:
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise CnClipLoraError(
                    f"--dataset_name {source.name}: a data file must be CSV, TSV, JSON(L) or Parquet, "
                    f"got {path.suffix!r}"
                )
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            splits = datasets.load_dataset(builder, data_files={source.train_split: str(path)}, **kwargs)
            return splits, path.parent
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            splits = datasets.load_from_disk(str(path))
        else:
            splits = datasets.load_dataset(source.name, source.config)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise CnClipLoraError(f"--dataset_name {source.name}: cannot be loaded ({str(err).splitlines()[0]})") from None
    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict({source.train_split: splits})
    return splits, path if path.is_dir() else None


def _column_problem(where: str, option: str, wanted: str, columns: list[str]) -> Problem:
    close = difflib.get_close_matches(wanted, columns, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    msg = f"no column {wanted!r} (columns: {', '.join(columns)}); pass {option} NAME{hint}"
    return Problem(where, None, msg, True, "missing column")


def _rows(split: Any, source: DatasetSource, where: str, base: Path | None, cache: Path, problems: list[Problem]):
    """``(caption, image path, group key)`` per usable row of one split; problems collected."""
    import datasets

    columns = list(split.column_names)
    missing = False
    for option, wanted in (("--image_column", source.image_column), ("--caption_column", source.caption_column)):
        if wanted not in columns:
            problems.append(_column_problem(where, option, wanted, columns))
            missing = True
    if source.group_column and source.group_column not in columns:
        problems.append(_column_problem(where, "--group_column", source.group_column, columns))
        missing = True
    if missing:
        return []
    feature = split.features[source.image_column]
    if isinstance(feature, datasets.Image):
        split = split.cast_column(source.image_column, datasets.Image(decode=False))
    out_dir = cache / hashlib.sha256(f"{source.name}|{where}|{split._fingerprint}".encode()).hexdigest()[:24]
    keep = [source.caption_column, source.image_column] + ([source.group_column] if source.group_column else [])
    rows = []
    for index, row in enumerate(split.select_columns(keep)):
        caption, image = row[source.caption_column], row[source.image_column]

        def bad(msg: str, index: int = index) -> None:
            problems.append(Problem(where, None, f"row {index}: {msg}", True, "bad row"))

        if not isinstance(caption, str) or not caption.strip():
            bad(f"the caption ({source.caption_column}) is empty or not text")
            continue
        path = _image_path(image, base, out_dir, index)
        if isinstance(path, Problem) or path is None:
            bad(f"the image ({source.image_column}) {'is missing' if path is None else path.message}")
            continue
        group = row[source.group_column] if source.group_column else path
        rows.append((caption, path, str(group)))
    return rows


def _image_path(image: Any, base: Path | None, out_dir: Path, index: int) -> str | Problem | None:
    """The file of one row's image: its path (relative to the dataset's folder), or its embedded
    bytes written once into the images cache."""
    from cnclip_lora.data.cnclip_layout import image_extension, write_image_file

    if isinstance(image, dict):  # an undecoded Image feature
        if image.get("path") and Path(image["path"]).is_file():
            return str(Path(image["path"]).resolve())
        blob = image.get("bytes")
        if not blob:
            return None if not image.get("path") else Problem("", None, f"file {image['path']!r} not found", True, "")
        ext = image_extension(blob)
        if ext is None:
            return Problem("", None, "holds bytes that are not an image file", True, "")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{index}.{ext}"
        if not target.is_file():
            write_image_file(target, blob)
        return str(target)
    if isinstance(image, str) and image:
        path = Path(image) if Path(image).is_absolute() or base is None else base / image
        if not path.is_file():
            return Problem("", None, f"file {image!r} not found", True, "")
        return str(path.resolve())
    return None


def load_hf_data(
    source: DatasetSource,
    *,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    use_answers: bool = True,
    raise_on_problems: bool = True,
    image_cache: str | os.PathLike | None = None,
):
    """A ``datasets`` dataset as :class:`~cnclip_lora.data.dataset.CompetitionData`."""
    import pandas as pd

    from cnclip_lora.data.dataset import CompetitionData, _dataset
    from cnclip_lora.data.report import DataReport, error_message
    from cnclip_lora.errors import DataError
    from cnclip_lora.inputs.images import decode_errors
    from cnclip_lora.utils.caches import usable_cache_dir

    cache = Path(image_cache) if image_cache is not None else usable_cache_dir(None, "images", required=True)
    splits, base = _open(source)
    problems: list[Problem] = []
    read: dict[str, list[tuple[str, str, str]]] = {}
    for role, name, limit in (
        ("train", source.train_split, source.max_train_samples),
        ("valid", source.validation_split, source.max_eval_samples),
        ("test", source.test_split, source.max_eval_samples),
    ):
        if name not in splits:
            if role == "train" or (role == "test" and require_queries):
                known = ", ".join(splits)
                msg = f"no split {name!r} (splits: {known}); pass --{role if role != 'valid' else 'validation'}_split"
                problems.append(Problem(source.name, None, msg, role == "train", "missing split"))
            continue
        split = splits[name]
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        read[role] = _rows(split, source, f"{source.name}[{name}]", base, cache, problems)
    decoded = excluded = 0
    if check_images:
        paths = sorted({p for rows in read.values() for _, p, _ in rows})
        errors = decode_errors(Path(os.sep), [p.lstrip(os.sep) for p in paths], num_workers)
        decoded = len(paths)
        bad = {os.sep + k for k, why in errors.items() if why}
        for role, rows in read.items():
            for _, path, _ in rows:
                if path in bad:
                    msg = f"image {path} cannot be read ({errors[path.lstrip(os.sep)]})"
                    problems.append(Problem(source.name, None, msg, True, "corrupt image"))
            read[role] = [r for r in rows if r[1] not in bad]
        excluded = len(bad)
    if skip_bad_rows:
        problems = [Problem(p.file, p.line, p.message + " (skipped)", False, p.kind)
                    if p.kind in ("bad row", "corrupt image") else p for p in problems]  # fmt: skip
    train = read.get("train", [])
    groups: dict[str, int] = {}
    train_group = [groups.setdefault(g, len(groups)) for _, _, g in train]

    def labelled(rows: list[tuple[str, str, str]]) -> tuple[list[str], list[list[int]], list[str]]:
        gallery = list(dict.fromkeys(p for _, p, _ in rows))
        index = {p: i for i, p in enumerate(gallery)}
        by_group: dict[str, set[int]] = {}
        for _, p, g in rows:
            by_group.setdefault(g, set()).add(index[p])
        return [c for c, _, _ in rows], [sorted(by_group[g]) for _, _, g in rows], gallery

    val_titles, val_labels, val_gallery = labelled(read.get("valid", []))
    test_titles, test_labels, gallery = labelled(read.get("test", []))
    answers = None
    if use_answers and test_titles:
        answers = pd.DataFrame(
            {"query": range(len(test_titles)), "label": [x[0] for x in test_labels], "labels": test_labels}
        )
    report = DataReport(
        problems,
        sum(p.message.endswith("(skipped)") for p in problems),
        len(train),
        len(val_titles),
        len(test_titles),
        len(gallery),
        len(val_gallery),
        n_train_images=len({p for _, p, _ in train}),
        n_val_images=len(val_gallery),
        multi_caption_images=len(train) - len(groups),
        excluded_images=excluded,
        images_decoded=decoded,
        root=source.name,
        layout="datasets",
    )
    if raise_on_problems and not report.ok:
        raise DataError(error_message(source.name, report.problems), report.fatal_problems)
    str_, int_ = "string", "int64"
    rel = [p.lstrip(os.sep) for p in val_gallery]
    return CompetitionData(
        root=base if base is not None else Path(source.name),
        image_dir=Path(os.sep),
        train=_dataset(
            {
                "title": [c for c, _, _ in train],
                "path": [p.lstrip(os.sep) for _, p, _ in train],
                "row": list(range(len(train))),
                "group": train_group,
            },
            {"title": str_, "path": str_, "row": int_, "group": int_},
        ),
        val=_dataset(
            {
                "title": val_titles,
                "path": [rel[lab[0]] for lab in val_labels],
                "row": list(range(len(val_titles))),
                "label": [lab[0] for lab in val_labels],
            },
            {"title": str_, "path": str_, "row": int_, "label": int_},
        ),
        queries=_dataset(
            {"title": test_titles, "query": list(range(len(test_titles)))}, {"title": str_, "query": int_}
        ),
        gallery=_dataset({"path": [p.lstrip(os.sep) for p in gallery]}, {"path": str_}),
        val_gallery=_dataset({"path": rel}, {"path": str_}),
        sample_submit=None,
        answers=answers,
        report=report,
        val_labels_override=val_labels,
    )
