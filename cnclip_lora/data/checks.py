"""Checking a data folder: each step takes what earlier steps found and returns what it finds.

:func:`scan_folder` runs the steps (list image/, check train.csv, decode the images, settle the
training rows and the gallery, check the queries, the submission template and the answers, split)
and collects every problem into one :class:`DataReport`, so a user fixes a broken folder in one
pass instead of one crash per epoch. Titles are kept as written (only surrounding whitespace is
stripped, which no tokenization sees); :func:`normalize_title` decides only what counts as empty or
duplicate.
"""

from __future__ import annotations

import difflib
import os
import stat
import unicodedata
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cnclip_lora.data.report import DataReport, Problem, error_message
from cnclip_lora.data.split import held_out_images, parse_val_size
from cnclip_lora.data.tables import Record, Table, parse_table
from cnclip_lora.errors import DataError
from cnclip_lora.inputs.images import IMAGE_EXTENSIONS, decode_errors
from cnclip_lora.options import DEFAULT_MAX_LENGTH, DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE

__all__ = [
    "DataFolder",
    "FolderScan",
    "check_data",
    "count_truncated",
    "normalize_title",
    "scan_folder",
    "submission_order",
]

_TRAIN, _QUERY, _SUBMIT, _ANSWERS, _IMAGES = (
    "train.csv",
    "test_query.csv",
    "sample_submit.csv",
    "test_answers.csv",
    "image",
)
_EXTS = "an extension of a format Pillow opens (.jpg .jpeg .png .webp .bmp .gif .tif ...)"


# ---------------------------------------------------------------------- text helpers


def normalize_title(title: str) -> str:
    """The ``nfkc`` title normalization, and the key that decides empty and duplicate titles.

    NFKC folds full-width letters, digits and punctuation (``ＸＬ２０１９，``) to ASCII
    (``XL2019,``): shop titles mix both forms for the same brand, size or year, and the
    bert-base-chinese vocabulary has whole-word pieces (``2019``) and lower-case letters only
    for the ASCII forms, while both comma forms are in it. Control characters become
    spaces, invisible format characters (zero-width space, BOM) are dropped, and whitespace
    runs collapse to one space. Case is left to the tokenizer.
    """
    text = unicodedata.normalize("NFKC", str(title))
    cleaned = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cc":
            cleaned.append(" ")
        elif category != "Cf":
            cleaned.append(ch)
    return " ".join("".join(cleaned).split())


def count_truncated(
    titles: Sequence[str],
    tokenizer,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 1024,
    title_normalization: str = "official",
) -> int:
    """How many titles are longer than ``max_length`` tokens (special tokens included).

    Long titles are never an error: the collator truncates them to ``max_length`` (the seed
    recipe's 52), which drops their tail. The count goes into ``DataReport.truncated_titles`` so
    a user sees how much text is cut and can raise ``--max_length``.

    Args:
        titles: Titles as in the data; prepared and counted as training tokenises them
            (:func:`cnclip_lora.inputs.text.count_tokens`).
        tokenizer: The checkpoint's tokenizer.
        max_length: The training/retrieval title length in tokens.
        batch_size: Titles tokenised per call (bounds memory on huge sets).
        title_normalization: the recorded title preparation.
    """
    from cnclip_lora.inputs.text import count_tokens

    titles = list(titles)
    count = 0
    for start in range(0, len(titles), batch_size):
        lengths = count_tokens(titles[start : start + batch_size], tokenizer, title_normalization)
        count += sum(1 for n in lengths if n > max_length)
    return count


# ------------------------------------------------------------------ paths and names


def _undecodable_name(name: str) -> str | None:
    """Why a file name read from disk cannot be used (not valid UTF-8), or None.

    ``os.walk`` hands such bytes over as surrogate escapes; they cannot be written to a CSV or
    matched against train.csv. Archives made on Chinese Windows hold GBK names, so the GBK
    reading is offered as the likely intended name.
    """
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        raw = os.fsencode(name)
    try:
        guess = f" (read as GBK it is `{raw.decode('gb18030')}`)"
    except UnicodeDecodeError:
        guess = ""
    return (
        f"file name {raw!r} is not valid UTF-8{guess}; rename it to UTF-8 "
        "(e.g. `convmv -f gbk -t utf8 --notest -r image/`, or unzip with `unzip -O GBK`)"
    )


def _entry_problem(path: Path, root: Path) -> tuple[str, str] | None:
    """``(kind, message)`` when ``path`` must not be read, judged with ``lstat`` (never opened).

    Only regular files are read: a named pipe would block the reader forever and a device could
    be endless. A symbolic link is followed only when it resolves to a regular file inside the
    data folder (``root``), so a link cannot pull in, or rank, a file from elsewhere.
    """
    try:
        info = os.lstat(path)
    except OSError as exc:
        return "special file", f"cannot be examined ({exc.strerror or exc}); replace or delete it"
    if stat.S_ISREG(info.st_mode):
        return None
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(root):
            return "unsafe link", (
                f"symbolic link to `{target}`, outside the data folder {root}; copy the image into image/ "
                "instead of linking to it"
            )
        try:
            target_mode = os.stat(path).st_mode
        except OSError:
            return "unsafe link", "broken symbolic link (its target does not exist); delete it or fix the link"
        if stat.S_ISREG(target_mode):
            return None
        info = os.stat(path)
    kinds = {
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISDIR: "a folder",
    }
    what = next((name for test, name in kinds.items() if test(info.st_mode)), "not a regular file")
    return "special file", f"is {what}, not a regular file; only regular image files are read (it was not opened)"


def _walk_image_dir(image_dir: Path, root: Path) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Regular files under ``image_dir`` (POSIX paths relative to it) and the refused entries.

    Refused: non-regular files, links leaving ``root`` (see :func:`_entry_problem`), names that
    are not valid UTF-8, and linked folders (not followed). Hidden folders are skipped.
    """
    root = Path(os.path.realpath(root))
    usable: list[str] = []
    refused: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(image_dir):
        rel = Path(dirpath).relative_to(image_dir)
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)) and not d.startswith("."):
                name = (rel / d).as_posix() if rel.parts else d
                why = "is a linked folder, which is not followed; copy its images into image/"
                refused[name] = ("special file", why)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            rel_name = (rel / name).as_posix() if rel.parts else name
            bad_name = _undecodable_name(rel_name)
            problem = ("undecodable name", bad_name) if bad_name else _entry_problem(Path(dirpath) / name, root)
            if problem:
                refused[rel_name] = problem
            else:
                usable.append(rel_name)
    return sorted(usable), refused


def readable_image_files(
    folder: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The one rule for what is read from an image folder: ``(usable names, refused entries)``.

    Usable: regular files under ``folder`` (links only when they resolve to a regular file inside
    ``root``, by default ``folder`` itself); refused: everything else, with the reason.
    """
    return _walk_image_dir(Path(folder), Path(root if root is not None else folder))


def _clean_path(raw: str) -> tuple[str | None, str | None]:
    """Return ``(relative_posix_path, None)`` or ``(None, why_it_is_invalid)``."""
    value = raw.strip().replace("\\", "/")
    if not value:
        return None, "empty path; give the image's file name inside image/"
    pure = PurePosixPath(value)
    if pure.is_absolute() or (len(value) > 2 and value[0].isalpha() and value[1:3] == ":/"):
        return None, f"path `{raw.strip()}` is absolute; give the file name relative to image/"
    if ".." in pure.parts:
        return None, f"path `{raw.strip()}` leaves image/ (`..`); give a file name inside image/"
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        return None, f"path `{raw.strip()}` names no file; give the image's file name inside image/"
    return "/".join(parts), None


def submission_order(sample_submit: pd.DataFrame, titles: Sequence[str], *, display: str = _SUBMIT) -> list[int]:
    """For each row of ``sample_submit``, the index of the query (row of test_query.csv) it answers.

    Without a ``title`` column (or with an all-blank one) the rows are taken in query order, the
    only alignment there is. With titles, each row is matched by its own title (normalised the
    same way as the queries), so a template in another order still gets every row its own
    query's image; repeated titles are matched in order of appearance. A template row whose title
    is not a query (or appears more often than among the queries) is refused, naming the line.

    Raises:
        DataError: The row count differs, or a title cannot be matched.
    """
    titles = [normalize_title(t) for t in titles]
    if len(sample_submit) != len(titles):
        msg = f"has {len(sample_submit)} rows but there are {len(titles)} queries; it needs one row per query"
        raise DataError(f"{display}: {msg}", [Problem(display, None, msg, True, "row count")])
    if "title" not in sample_submit.columns:
        return list(range(len(titles)))
    wanted = [normalize_title(t) for t in sample_submit["title"]]
    if wanted == titles or not any(wanted):
        return list(range(len(titles)))
    slots: dict[str, deque[int]] = defaultdict(deque)
    for i, title in enumerate(titles):
        slots[title].append(i)
    lines = sample_submit.attrs.get("lines") or [i + 2 for i in range(len(wanted))]
    order, problems = [], []
    for row, title in enumerate(wanted):
        if slots[title]:
            order.append(slots[title].popleft())
            continue
        extra = "is blank" if not title else f"`{title}` is not a query in {_QUERY}"
        if title and title in titles:
            extra = f"`{title}` occurs more often than in {_QUERY}"
        msg = (
            f"title {extra}, so the row cannot be matched to its query; make the titles those of "
            f"{_QUERY} (any order), or remove the title column to fill the rows in query order"
        )
        problems.append(Problem(display, lines[row], msg, True, "submission title"))
    if problems:
        raise DataError(error_message(display, problems), problems)
    return order


def _missing_hint(path: str, files: set[str], lower: dict[str, str]) -> str:
    if path.startswith("image/") and path[6:] in files:
        return f"; paths are relative to image/: write `{path[6:]}`"
    if path.lower() in lower:
        return f"; did you mean `{lower[path.lower()]}`? (file names are case-sensitive)"
    for ext in IMAGE_EXTENSIONS:
        if path + ext in files:
            return f"; did you mean `{path + ext}`?"
    return ""


def _image_dir_hint(root: Path) -> str:
    """Name a similarly named folder (``images/``, ``Image/``) when there is one."""
    try:
        folders = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        folders = []
    lower = {name.lower(): name for name in folders}
    close = difflib.get_close_matches(_IMAGES, folders, n=1, cutoff=0.6) or (
        [lower[_IMAGES]] if _IMAGES in lower else []
    )
    if close:
        return f"did you mean {close[0]}/? rename it to {_IMAGES}/ (every image, training and test, goes there)"
    return "put every image (training and test) in image/ inside the data folder"


# ------------------------------------------------------------------------------ steps


@dataclass(frozen=True)
class DataFolder:
    """A data folder as the user named it: files are read under it and named in messages as given."""

    data_dir: str

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def image_dir(self) -> Path:
        return self.root / _IMAGES

    def disp(self, name: str) -> str:
        """A path as the user would write it: under the folder they gave, not resolved."""
        return os.path.join(self.data_dir, name)

    def read(
        self, name: str, sep: str, required: Sequence[str], missing_hint: str = "", keep_blank: bool = False
    ) -> Table:
        return parse_table(
            self.root / name,
            self.disp(name),
            sep=sep,
            required=required,
            missing_hint=missing_hint,
            keep_blank=keep_blank,
        )

    def encodings(self, name: str, table: Table) -> dict[str, str]:
        """``{file as shown: encoding}`` for the report, when the file could be decoded."""
        return {self.disp(name): table.encoding} if table.encoding else {}


@dataclass
class ImageListing:
    """What ``image/`` holds; one listing serves every existence check instead of one stat() per row."""

    files: set[str] = field(default_factory=set)  # every usable file under image/
    lower: dict[str, str] = field(default_factory=dict)  # lower-cased name -> name, for "did you mean"
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # entries never read -> (kind, why)
    images: list[str] = field(default_factory=list)  # files with an image extension, sorted
    missing: bool = False  # image/ missing: per-row "image not found" problems are not repeated
    problems: list[Problem] = field(default_factory=list)
    excluded: int = 0  # refused entries skipped under skip_bad_rows


def list_images(folder: DataFolder, skip_bad_rows: bool) -> ImageListing:
    """List ``image/``; every entry that is never read is a (skippable) problem naming it."""
    listing = ImageListing()
    where = folder.disp(_IMAGES)
    if not folder.image_dir.is_dir():
        listing.missing = True
        msg = f"image folder not found; {_image_dir_hint(folder.root)}"
        listing.problems.append(Problem(where, None, msg, True, "missing file"))
        return listing
    listed, listing.refused = _walk_image_dir(folder.image_dir, folder.root)
    for name, (kind, message) in sorted(listing.refused.items()):
        shown = name.encode("utf-8", "backslashreplace").decode("utf-8")
        entry = folder.disp(f"{_IMAGES}/{shown}")
        if skip_bad_rows:
            listing.problems.append(Problem(entry, None, message + " (excluded)", False, kind))
            listing.excluded += 1
        else:
            listing.problems.append(Problem(entry, None, message, True, kind, skippable=True))
    listing.files = set(listed)
    listing.lower = {f.lower(): f for f in listed}
    listing.images = [f for f in listed if f.lower().endswith(IMAGE_EXTENSIONS)]
    others = [f for f in listed if not f.lower().endswith(IMAGE_EXTENSIONS)]
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        msg = f"ignored {len(others)} file(s) that are not images ({shown}); images must end in {_EXTS}"
        listing.problems.append(Problem(where, None, msg, False, "non-image file"))
    if not listing.images:
        listing.problems.append(Problem(where, None, f"contains no images ({_EXTS})", True, "missing file"))
    return listing


@dataclass
class TrainRows:
    """train.csv checked against the image listing, before any image is decoded."""

    candidates: list[tuple[str, str, Record]] = field(default_factory=list)  # rows that passed so far
    bad: dict[int, list[Problem]] = field(default_factory=lambda: defaultdict(list))  # data row -> problems
    paths: set[str] = field(default_factory=set)  # every image train.csv names, bad rows included
    problems: list[Problem] = field(default_factory=list)  # about the file as a whole
    encodings: dict[str, str] = field(default_factory=dict)
    readable: bool = True  # False when the file could not be read as a table at all (no file, wrong header)


def check_train(folder: DataFolder, listing: ImageListing) -> TrainRows:
    """Check every train.csv row's title and path; row problems are kept per row, fatal or not later."""
    hint = "it must hold the training pairs, TAB-separated with header `title<TAB>path`"
    table = folder.read(_TRAIN, "\t", ("title", "path"), hint)
    out = TrainRows(problems=list(table.problems), encodings=folder.encodings(_TRAIN, table))
    where = folder.disp(_TRAIN)
    for record, problem in table.bad_rows:
        out.bad[record.row].append(problem)
        last = record.values[-1].strip() if record.values else ""
        if last in listing.files:
            out.paths.add(last)  # best guess, so a train image never leaks into the gallery
    if not table.usable:
        out.readable = False
        return out
    if not table.records and not table.bad_rows:
        out.problems.append(Problem(where, None, "has a header but no training pairs", True, "missing file"))
    ti, pi = table.columns.index("title"), table.columns.index("path")
    seen: dict[tuple[str, str], int] = {}
    for record in table.records:
        title = record.values[ti].strip()
        key = normalize_title(title)
        path, why = _clean_path(record.values[pi])
        problems = []
        if not key:
            problems.append(("empty title; write the product title or delete the row", "empty title"))
        if path is None:
            problems.append((why, "bad path"))
        else:
            out.paths.add(path)
            if path in listing.refused:
                reason = listing.refused[path][1].split(";")[0]
                problems.append((f"image `{path}` is not read: {reason}", "missing image"))
            elif path not in listing.files and listing.missing:
                continue  # one problem, the missing folder, explains every row: no per-row cascade
            elif path not in listing.files:
                hint = _missing_hint(path, listing.files, listing.lower)
                problems.append((f"image `{path}` not found in {folder.disp(_IMAGES)}{hint}", "missing image"))
            elif key:
                first = seen.setdefault((key, path), record.line)
                if first != record.line:
                    msg = f"duplicate of line {first} (same title and path); delete one of them"
                    problems.append((msg, "duplicate row"))
        for message, kind in problems:
            out.bad[record.row].append(Problem(where, record.line, message, True, kind))
        if not problems:
            out.candidates.append((title, path, record))
    return out


def _gallery_candidates(listing: ImageListing, train: TrainRows) -> list[str]:
    """The competition's gallery rule: every image the full train.csv (skipped rows included) does not name."""
    return [f for f in listing.images if f not in train.paths]


def decode_images(
    folder: DataFolder, listing: ImageListing, train: TrainRows, num_workers: int | None
) -> dict[str, str | None]:
    """Decode every candidate training image and gallery image: ``{name: why unreadable, or None}``."""
    to_check = sorted({p for _, p, _ in train.candidates} | set(_gallery_candidates(listing, train)))
    return decode_errors(folder.image_dir, to_check, num_workers)


@dataclass
class KeptRows:
    """The training rows and gallery images that are used, and what happened to the others."""

    train: list[tuple[str, str, int]]  # (title, path, 0-based data row)
    gallery: list[str]
    problems: list[Problem]
    skipped_rows: int
    excluded: int  # corrupt gallery images skipped under skip_bad_rows


def keep_rows(
    folder: DataFolder,
    listing: ImageListing,
    train: TrainRows,
    errors: dict[str, str | None],
    skip_bad_rows: bool,
) -> KeptRows:
    """Drop unreadable images; every bad row becomes a fatal (skippable) problem, or a skip note."""
    bad: dict[int, list[Problem]] = defaultdict(list, {row: list(ps) for row, ps in train.bad.items()})
    kept = []
    for title, path, record in train.candidates:
        if errors.get(path):
            msg = f"image `{path}` cannot be read ({errors[path]}); replace the file or delete the row"
            bad[record.row].append(Problem(folder.disp(_TRAIN), record.line, msg, True, "corrupt image"))
        else:
            kept.append((title, path, record.row))
    problems = []
    for row in sorted(bad):
        for problem in bad[row]:
            if skip_bad_rows:
                problems.append(replace(problem, fatal=False, message=problem.message + " (row skipped)"))
            else:
                problems.append(replace(problem, skippable=True))
    if skip_bad_rows and bad and not kept:
        # Not fatal here: retrieval needs no training pair; training refuses an empty set.
        msg = "every row was skipped: no training pairs are left"
        problems.append(Problem(folder.disp(_TRAIN), None, msg, False, "skipped row"))
    gallery, excluded = [], 0
    for path in _gallery_candidates(listing, train):
        if not errors.get(path):
            gallery.append(path)
            continue
        msg = f"cannot be read ({errors[path]}); replace or delete this gallery image"
        where = folder.disp(f"{_IMAGES}/{path}")
        if skip_bad_rows:
            problems.append(Problem(where, None, msg + " (excluded from the gallery)", False, "corrupt image"))
            excluded += 1
        else:
            problems.append(Problem(where, None, msg, True, "corrupt image", skippable=True))
    return KeptRows(kept, gallery, problems, len(bad) if skip_bad_rows else 0, excluded)


@dataclass
class QueryTitles:
    """test_query.csv: the titles of its good rows, and how many rows it has (``None``: unusable or absent)."""

    titles: list[str] = field(default_factory=list)
    count: int | None = None
    problems: list[Problem] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)


def check_queries(folder: DataFolder, require_queries: bool) -> QueryTitles:
    """A submission needs one row per query, so nothing here is skippable."""
    if not require_queries and not (folder.root / _QUERY).exists():
        return QueryTitles()
    table = folder.read(
        _QUERY,
        ",",
        ("title",),
        "it must hold the test queries, a comma CSV with a `title` column",
        keep_blank=True,
    )
    out = QueryTitles(
        problems=table.problems + [p for _, p in table.bad_rows], encodings=folder.encodings(_QUERY, table)
    )
    if not table.usable:
        return out
    where = folder.disp(_QUERY)
    out.count = len(table.records) + len(table.bad_rows)
    if not out.count:
        out.problems.append(Problem(where, None, "has a header but no queries", True, "missing file"))
    ti = table.columns.index("title")
    for record in table.records:
        title = record.values[ti].strip()
        if not normalize_title(title):
            msg = "empty query title; every query needs its text (a submission has one row per query)"
            out.problems.append(Problem(where, record.line, msg, True, "empty title"))
        out.titles.append(title)
    return out


@dataclass
class CheckedFrame:
    """An optional table read as a ``DataFrame`` (``None`` when absent or unusable) and its problems."""

    frame: pd.DataFrame | None = None
    problems: list[Problem] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)


def check_submit(folder: DataFolder, queries: QueryTitles) -> CheckedFrame:
    """sample_submit.csv is optional, but a template with the wrong row count would break the submission."""
    if not (folder.root / _SUBMIT).exists():
        return CheckedFrame()
    table = folder.read(_SUBMIT, ",", ("path",), keep_blank=True)
    out = CheckedFrame(
        problems=table.problems + [p for _, p in table.bad_rows], encodings=folder.encodings(_SUBMIT, table)
    )
    if not table.usable or table.bad_rows:
        return out
    out.frame = table.frame()
    n_rows = len(table.records)
    if queries.count is not None and n_rows != queries.count:
        msg = f"has {n_rows} rows but {_QUERY} has {queries.count}; it needs one row per query, in order"
        out.problems.append(Problem(folder.disp(_SUBMIT), None, msg, True, "row count"))
    elif queries.count is not None and len(queries.titles) == n_rows and all(queries.titles):
        try:
            submission_order(out.frame, queries.titles, display=folder.disp(_SUBMIT))
        except DataError as err:
            out.problems.extend(err.problems)
    return out


def check_answers(
    folder: DataFolder,
    answers_file: str | os.PathLike | None,
    listing: ImageListing,
    train: TrainRows,
    gallery: Sequence[str],
    queries: QueryTitles,
    errors: dict[str, str | None],
) -> CheckedFrame:
    """The answer key: ``test_answers.csv`` (written by the demo generator, so demos can score
    themselves) or an explicit file (``evaluate --answers``, which must exist). Errors would mis-score."""
    name = str(answers_file) if answers_file is not None else _ANSWERS
    if not (folder.root / name).exists():  # an absolute name replaces the root
        out = CheckedFrame()
        if answers_file is not None:
            msg = "answers file not found; pass a CSV with columns query,path"
            out.problems.append(Problem(folder.disp(name), None, msg, True, "missing file"))
        return out
    table = folder.read(name, ",", ("query", "path"))
    out = CheckedFrame(
        problems=table.problems + [p for _, p in table.bad_rows], encodings=folder.encodings(name, table)
    )
    if not table.usable or table.bad_rows or listing.missing:
        return out  # without image/ every answer would be "not found": the folder problem says it once
    index = {p: i for i, p in enumerate(gallery)}
    qi, pi = table.columns.index("query"), table.columns.index("path")
    answered, paths, labels = [], [], []
    seen: dict[int, int] = {}
    for record in table.records:
        query, img, message = _check_answer(
            record.values[qi], record.values[pi], record.line, seen, index, folder, listing, train, queries, errors
        )
        if message:
            out.problems.append(Problem(folder.disp(name), record.line, message, True, "bad answer"))
        else:
            answered.append(query)
            paths.append(img)
            labels.append(index[img])
    if len(labels) == len(table.records):
        frame = table.frame()
        frame["query"] = np.asarray(answered, dtype=np.int64)
        frame["path"] = paths
        frame["label"] = np.asarray(labels, dtype=np.int64)
        out.frame = frame
    return out


def _check_answer(
    raw_query: str,
    raw_path: str,
    line: int,
    seen: dict[int, int],
    index: dict[str, int],
    folder: DataFolder,
    listing: ImageListing,
    train: TrainRows,
    queries: QueryTitles,
    errors: dict[str, str | None],
) -> tuple[int, str, str | None]:
    """Check one answer row; returns ``(query, path, problem message or None)``."""
    raw_query = raw_query.strip()
    try:
        query = int(raw_query)
    except ValueError:
        return -1, "", f"query `{raw_query}` is not a row number; give the 0-based row of the query in {_QUERY}"
    if query < 0:
        return query, "", f"query {query} is negative; give the 0-based row of the query in {_QUERY}"
    if queries.count is not None and query >= queries.count:
        rows = f"rows 0-{queries.count - 1}"
        return query, "", f"query {query} is out of range: {_QUERY} has {queries.count} queries ({rows})"
    if query in seen:
        return query, "", f"query {query} already answered at line {seen[query]}; keep one answer per query"
    seen[query] = line
    img, why = _clean_path(raw_path)
    if img is None:
        return query, "", why
    if img in train.paths:
        return query, img, f"image `{img}` is named by {_TRAIN}, so it is not in the test gallery"
    if img not in listing.files:
        hint = _missing_hint(img, listing.files, listing.lower)
        return query, img, f"image `{img}` not found in {folder.disp(_IMAGES)}{hint}"
    if img not in index:
        error = errors.get(img)
        reason = f"it cannot be read ({error})" if error else f"its extension is not one of {_EXTS}"
        return query, img, f"image `{img}` is not in the gallery: {reason}"
    return query, img, None


# -------------------------------------------------------------------------- the scan


@dataclass
class FolderScan:
    """Everything one check of a data folder found: the report and the rows that passed."""

    report: DataReport
    root: Path
    image_dir: Path
    train: list[tuple[str, str, int]] = field(default_factory=list)  # (title, path, 0-based data row)
    gallery: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)  # training images held out for validation, sorted
    queries: list[str] = field(default_factory=list)
    sample_submit: pd.DataFrame | None = None
    answers: pd.DataFrame | None = None


def _split_counts(train: Sequence[tuple[str, str, int]], held_out: Sequence[str], gallery: Sequence[str]) -> dict:
    """The report's counts of pairs and images on each side of the split."""
    held = set(held_out)
    captions: dict[str, set[str]] = defaultdict(set)
    for title, path, _ in train:
        captions[path].add(title)
    n_val = sum(1 for _, p, _ in train if p in held)
    return {
        "multi_caption_images": sum(1 for titles in captions.values() if len(titles) > 1),
        "n_val": n_val,
        "n_train": len(train) - n_val,
        "n_train_images": len(captions) - len(held),
        "n_val_images": len(held),
        "n_gallery": len(gallery),
        "n_val_gallery": len(held) + len(set(gallery) - held) if held else 0,
    }


def scan_folder(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int,
    seed: int,
    skip_bad_rows: bool,
    check_images: bool,
    require_queries: bool,
    num_workers: int | None,
    answers_file: str | os.PathLike | None = None,
    use_answers: bool = True,
) -> FolderScan:
    """Run every check on a data folder (arguments as :func:`check_data`); never raises ``DataError``.
    ``use_answers=False``: the answers file is not read (a verb that does not score the test queries
    is not stopped by it)."""
    val_size = parse_val_size(val_size)
    folder = DataFolder(str(data_dir))
    if not folder.root.is_dir():
        hint = "pass the folder that holds train.csv, test_query.csv and image/"
        problem = Problem(folder.data_dir, None, f"data folder not found; {hint}", True, "missing file")
        return FolderScan(DataReport([problem], 0, 0, 0, 0, 0, 0, root=folder.data_dir), folder.root, folder.image_dir)
    listing = list_images(folder, skip_bad_rows)
    train = check_train(folder, listing)
    errors = decode_images(folder, listing, train, num_workers) if check_images else {}
    kept = keep_rows(folder, listing, train, errors, skip_bad_rows)
    queries = check_queries(folder, require_queries)
    submit = check_submit(folder, queries)
    answers = (
        check_answers(folder, answers_file, listing, train, kept.gallery, queries, errors)
        if use_answers
        else CheckedFrame()
    )
    problems = listing.problems + train.problems + kept.problems + queries.problems + submit.problems
    problems += answers.problems
    # Broken data: report that, not a split error about data that cannot be used anyway.
    usable = not any(p.fatal for p in problems)
    held_out = held_out_images((p for _, p, _ in kept.train), val_size if usable else 0, seed)
    report = DataReport(
        problems,
        skipped_rows=kept.skipped_rows,
        n_queries=len(queries.titles),
        excluded_images=listing.excluded + kept.excluded,
        images_decoded=len(errors),
        encodings={**train.encodings, **queries.encodings, **submit.encodings, **answers.encodings},
        root=folder.data_dir,
        train_read=train.readable,
        **_split_counts(kept.train, held_out, kept.gallery),
    )
    return FolderScan(
        report,
        folder.root,
        folder.image_dir,
        kept.train,
        kept.gallery,
        held_out,
        queries.titles,
        submit.frame,
        answers.frame,
    )


def check_data(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int = DEFAULT_VAL_SIZE,
    seed: int = DEFAULT_SPLIT_SEED,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    answers_file: str | os.PathLike | None = None,
    dataset: Any = None,
) -> DataReport:
    """Check a data folder and return every problem with the counts; never raises ``DataError``.

    Takes the same arguments as :func:`cnclip_lora.data.load_competition_data`; ``report.ok`` tells
    whether loading would succeed. ``report.summary()`` is what ``cnclip-lora check-data`` prints.
    """
    from cnclip_lora.data.dataset import other_source_reader

    reader = other_source_reader(data_dir, dataset)
    if reader is not None:
        return reader(
            skip_bad_rows=skip_bad_rows,
            check_images=check_images,
            require_queries=require_queries,
            num_workers=num_workers,
            raise_on_problems=False,
        ).report
    return scan_folder(
        data_dir,
        val_size=val_size,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        check_images=check_images,
        require_queries=require_queries,
        num_workers=num_workers,
        answers_file=answers_file,
    ).report
