"""Read and validate the competition data folder once, up front, as ``datasets.Dataset``s.

The layout is the iFLYTEK 2024 one (REFERENCE.md §1)::

    DIR/train.csv          TAB-separated, header ``title<TAB>path``
    DIR/test_query.csv     comma CSV with a ``title`` column (other columns ignored)
    DIR/image/             every image, training and test alike
    DIR/sample_submit.csv  optional: comma CSV with a ``path`` column, one row per query
    DIR/test_answers.csv   optional: comma CSV ``query,path`` (written by the demo generator)

Everything is checked before any model is loaded, and every problem is collected, so a
user fixes a broken folder in one pass instead of one crash per epoch. Titles are kept as
written (only surrounding whitespace is stripped, which no tokenization sees): how they reach
the tokenizer is a recorded preprocessing choice (:func:`cnclip_lora.text.prepare_titles`).
:func:`normalize_title` decides only what counts as empty or duplicate. Images go through
:func:`open_image` everywhere, so training and retrieval can never disagree about them.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import csv
import difflib
import functools
import io
import math
import numbers
import os
import re
import stat
import struct
import unicodedata
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import datasets
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from cnclip_lora.errors import ConfigError, DataError

__all__ = [
    "parse_val_size",
    "IMAGE_EXTENSIONS",
    "CompetitionData",
    "DataReport",
    "Problem",
    "MAX_PIXELS_ENV",
    "check_data",
    "count_truncated",
    "load_competition_data",
    "max_image_pixels",
    "normalize_title",
    "open_image",
    "read_table",
    "submission_order",
]



def _pillow_extensions() -> tuple[str, ...]:
    """Every file extension (lower case) of a format Pillow can open, so training, the image
    check and the gallery accept exactly the same files (GIF, TIFF, ... included)."""
    Image.init()
    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


#: File extensions (lower case) that make a regular file in ``image/`` a gallery candidate:
#: every format Pillow opens (an animated image contributes its first frame).
IMAGE_EXTENSIONS = _pillow_extensions()

_TRAIN, _QUERY, _SUBMIT, _ANSWERS, _IMAGES = (
    "train.csv",
    "test_query.csv",
    "sample_submit.csv",
    "test_answers.csv",
    "image",
)
_SEP_NAMES = {"\t": "TAB", ",": "comma"}
_SKIP_FLAG = "--skip_bad_rows"
_EXTS = "an extension of a format Pillow opens (.jpg .jpeg .png .webp .bmp .gif .tif ...)"
#: Environment variable that sets the largest image (in pixels) accepted; ``none`` disables the check.
MAX_PIXELS_ENV = "CNCLIP_MAX_IMAGE_PIXELS"


class _ImageTooLarge(ValueError):
    """An image over the pixel limit (Pillow's decompression-bomb guard)."""


# Pillow raises these for unreadable images; DecompressionBombError is not an OSError.
# Pillow's format plugins also leak struct.error, IndexError, TypeError... on damaged files: all mean
# "this file cannot be decoded" and are reported as such, never as a traceback.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, struct.error,
                 IndexError, KeyError, TypeError, AttributeError, ArithmeticError)


# --------------------------------------------------------------------------- report


@dataclass
class Problem:
    """One thing wrong (or worth knowing) about the data, located as precisely as possible.

    Args:
        file: The path as the user gave it, e.g. ``"xfdata/train.csv"``.
        line: 1-based line in ``file`` (the header is line 1); ``None`` for file-level problems.
        message: What is wrong and how to fix it.
        fatal: Whether it stops training/prediction.
        kind: Short category used to group problems in :meth:`DataReport.summary`.
        skippable: True for a fatal problem that ``skip_bad_rows=True`` would turn into a skip.
    """

    file: str
    line: int | None
    message: str
    fatal: bool
    kind: str = "other"
    skippable: bool = field(default=False, repr=False)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}, line {self.line}"
        return f"{where}: {self.message}"


@dataclass
class DataReport:
    """Counts and problems found in a data folder; what ``cnclip-lora check-data`` prints.

    ``n_val`` counts held-out pairs, ``n_val_gallery`` the images searched for them (held-out
    images plus the test gallery). ``truncated_titles`` is filled later by whoever tokenises.
    """

    problems: list[Problem]
    skipped_rows: int
    n_train: int
    n_val: int
    n_queries: int
    n_gallery: int
    n_val_gallery: int
    truncated_titles: int | None = None
    n_train_images: int = 0
    n_val_images: int = 0
    multi_caption_images: int = 0
    excluded_images: int = 0
    images_decoded: int = 0
    encodings: dict[str, str] = field(default_factory=dict)
    root: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found."""
        return not any(p.fatal for p in self.problems)

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def summary(self, max_per_group: int = 10) -> str:
        """A human-readable multi-line summary: counts first, then problems grouped by kind.

        Args:
            max_per_group: How many problems of one kind to list before "... and N more".
        """
        lines = [f"Data folder: {self.root}"]
        rows = [
            ("training pairs", f"{self.n_train:,} ({self.n_train_images:,} images)"),
            ("validation pairs", f"{self.n_val:,} ({self.n_val_images:,} held-out images)"),
            ("test queries", f"{self.n_queries:,}"),
            ("test gallery", f"{self.n_gallery:,} images (every image train.csv does not name)"),
            ("validation gallery", f"{self.n_val_gallery:,} images (held-out + test gallery)"),
            ("multi-caption images", f"{self.multi_caption_images:,}"),
            ("skipped rows", f"{self.skipped_rows:,}"),
        ]
        if self.excluded_images:
            rows.append(("excluded images", f"{self.excluded_images:,}"))
        rows.append(
            ("images decoded", f"{self.images_decoded:,}" if self.images_decoded else "none (existence only)")
        )
        if self.truncated_titles is not None:
            rows.append(("truncated titles", f"{self.truncated_titles:,}"))
        if self.encodings:
            rows.append(("encodings", ", ".join(f"{Path(k).name} {v}" for k, v in self.encodings.items())))
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name + ':':<{width + 1}} {value}" for name, value in rows]

        n_fatal = len(self.fatal_problems)
        n_notes = len(self.problems) - n_fatal
        lines.append(f"Problems: {n_fatal} fatal, {n_notes} notes")
        groups: dict[tuple[bool, str], list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[(p.fatal, p.kind)].append(p)
        for (fatal, kind), items in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
            lines.append(f"  [{'fatal' if fatal else 'note'}] {kind} ({len(items)}):")
            lines += [f"    {p}" for p in items[:max_per_group]]
            if len(items) > max_per_group:
                lines.append(f"    ... and {len(items) - max_per_group} more")
        if n_fatal and any(p.skippable for p in self.problems):
            lines.append(f"Bad training rows can be skipped instead with {_SKIP_FLAG}.")
        lines.append("OK" if self.ok else "NOT OK: fix the fatal problems above")
        return "\n".join(lines)


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


def count_truncated(titles: Sequence[str], tokenizer, max_length: int = 52, batch_size: int = 1024) -> int:
    """How many titles are longer than ``max_length`` tokens (special tokens included).

    Long titles are never an error: the collator truncates them to ``max_length`` (the seed
    recipe's 52), which drops their tail. The count goes into ``DataReport.truncated_titles`` so
    a user sees how much text is cut and can raise ``--max_length``.

    Args:
        titles: Titles as the tokenizer sees them (:func:`cnclip_lora.text.prepare_titles`).
        tokenizer: The checkpoint's tokenizer.
        max_length: The training/retrieval title length in tokens.
        batch_size: Titles tokenised per call (bounds memory on huge sets).
    """
    titles = list(titles)
    count = 0
    for start in range(0, len(titles), batch_size):
        chunk = titles[start : start + batch_size]
        ids = tokenizer(chunk, add_special_tokens=True, truncation=False)["input_ids"]
        count += sum(1 for seq in ids if len(seq) > max_length)
    return count


def _decode_bytes(raw: bytes) -> tuple[str, str]:
    """Decode a table file; returns ``(text, encoding)`` or raises ``_FileProblem``.

    Strict UTF-8 (BOM or not) first, then GB18030, a superset of GBK and GB2312 that rarely
    accepts UTF-8 by accident. A file that is mostly valid UTF-8 with a few bad bytes is
    reported as damaged rather than silently decoded as GB18030 mojibake.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise _FileProblem(
                f"not valid UTF-16 ({exc.reason}); re-save the file as UTF-8", _line_of(raw, exc.start)
            )
    try:
        text = raw.decode("utf-8-sig")
        encoding = "utf-8-sig" if raw.startswith(codecs.BOM_UTF8) else "utf-8"
    except UnicodeDecodeError as exc:
        loose = raw.decode("utf-8", errors="replace")
        n_bad = loose.count("\ufffd")
        n_good = sum(1 for ch in loose if ord(ch) > 127 and ch != "\ufffd")
        if n_good > n_bad:
            raise _FileProblem(
                "mostly UTF-8 but contains bytes that are not (the file is damaged); "
                "fix or delete that line and re-save the file as UTF-8",
                _line_of(raw, exc.start),
            )
        try:
            text, encoding = raw.decode("gb18030"), "gb18030"
        except UnicodeDecodeError as exc2:
            raise _FileProblem(
                "cannot be decoded as UTF-8 or GBK/GB18030; re-save the file as UTF-8",
                _line_of(raw, exc2.start),
            )
    if "\x00" in text:
        raise _FileProblem(
            "contains NUL characters (UTF-16 without a byte-order mark, or a binary file); "
            "re-save it as UTF-8 text",
            None,
        )
    return text, encoding


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


class _FileProblem(Exception):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message, self.line = message, line


@dataclass
class _Record:
    line: int  # 1-based line where the record starts
    row: int  # 0-based data row (what pandas' index would be)
    values: list[str]


@dataclass
class _Table:
    columns: list[str] = field(default_factory=list)
    records: list[_Record] = field(default_factory=list)  # well-formed rows only
    encoding: str | None = None
    problems: list[Problem] = field(default_factory=list)  # file-level: the table is unusable
    bad_rows: list[tuple[_Record, Problem]] = field(default_factory=list)  # caller decides fatality

    @property
    def usable(self) -> bool:
        return not self.problems

    def frame(self) -> pd.DataFrame:
        data = {c: [r.values[i] for r in self.records] for i, c in enumerate(self.columns)}
        frame = pd.DataFrame(data, columns=self.columns, dtype=str)
        frame.attrs["encoding"] = self.encoding
        frame.attrs["lines"] = [r.line for r in self.records]
        return frame


def _show_header(columns: Sequence[str], sep: str) -> str:
    return ("<TAB>" if sep == "\t" else ",").join(columns)


def _parse_table(
    path: Path, display: str, *, sep: str, required: Sequence[str], missing_hint: str, keep_blank: bool = False
) -> _Table:
    """Parse a delimited file with line numbers; never raises for bad content.

    ``keep_blank`` (files with one row per query): a whitespace-only or empty quoted row, and an
    empty line with rows after it, is a row (a blank title the caller reports), never dropped,
    so no later row shifts. Empty lines at the end of the file are still ignored.
    """
    table = _Table()
    expected = _show_header(required, sep)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        table.problems.append(Problem(display, None, f"{what}; {missing_hint}", True, "missing file"))
        return table
    try:
        text, table.encoding = _decode_bytes(path.read_bytes())
    except _FileProblem as exc:
        table.problems.append(Problem(display, exc.line, exc.message, True, "encoding"))
        return table

    # newline="" keeps quoted line breaks intact, as the csv module expects.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    prev_end, row = 0, 0
    pending: list[int] = []  # keep_blank: empty lines seen since the last row
    for fields in reader:
        start, prev_end = prev_end + 1, reader.line_num
        if keep_blank and header is not None:
            if not fields:
                pending.append(start)
                continue
            for blank_line in pending:  # an empty line followed by rows is a blank row
                table.records.append(_Record(blank_line, row, [""] * len(header)))
                row += 1
            pending = []
        elif not any(f.strip() for f in fields):
            continue  # blank line; pandas skips these too
        if header is None:
            header = [f.strip() for f in fields]
            header_line = sep.join(fields)  # re-split below to recognise a wrong separator
            missing = [c for c in required if c not in header]
            if missing:
                problem = _header_problem(display, start, sep, header, header_line, missing, expected)
                table.problems.append(problem)
                return table
            table.columns = header
            continue
        record = _Record(start, row, fields)
        row += 1
        if len(fields) > len(header) and not any(f.strip() for f in fields[len(header) :]):
            record.values = fields[: len(header)]  # trailing separators only
        if any("\n" in f or "\r" in f for f in record.values):
            msg = _line_break_message(record.values, len(header), sep, start, prev_end)
            table.bad_rows.append((record, Problem(display, start, msg, True, "malformed row")))
        elif len(record.values) != len(header):
            fix = (
                "separate the columns by exactly one TAB and keep TABs out of titles"
                if sep == "\t"
                else "put double quotes around any field that contains a comma"
            )
            shown = _show_header(header, sep)
            msg = f"{len(record.values)} fields but the header `{shown}` has {len(header)}; {fix}"
            table.bad_rows.append((record, Problem(display, start, msg, True, "malformed row")))
        else:
            table.records.append(record)
    if header is None:
        table.problems.append(
            Problem(display, None, f"file is empty; expected a header `{expected}`", True, "missing column")
        )
    return table


def _line_break_message(values: Sequence[str], n_columns: int, sep: str, start: int, end: int) -> str:
    """What to do about a field that spans lines.

    A well-formed quoted field with a line break inside (right field count, no separator swallowed)
    is refused rather than joined: a title is one line, and a break inside one is almost always an
    export accident the user should see. A field that swallowed separators or rows comes from a
    stray double quote.
    """
    spans = [f for f in values if "\n" in f or "\r" in f]
    if len(values) == n_columns and not any(sep in f for f in spans):
        return (
            f"a quoted field holds a line break (lines {start}-{end}); titles and paths must be one line: "
            "replace the line break inside the quotes with a space"
        )
    return (
        f'a field spans lines {start}-{end}: probably an unmatched double quote `"` '
        f'at line {start}; remove it or double it (`""`)'
    )


def _header_problem(
    display: str,
    line: int,
    sep: str,
    header: list[str],
    header_line: str,
    missing: list[str],
    expected: str,
) -> Problem:
    """Name the missing columns, or the wrong separator when another one would have worked."""
    name = Path(display).name
    for alt in ("\t", ",", ";"):
        if alt == sep:
            continue
        try:
            alt_header = [f.strip() for f in next(csv.reader([header_line], delimiter=alt), [])]
        except csv.Error:  # a header with a quoted line break: no alternative separator to suggest
            continue
        if all(c in alt_header for c in missing) and len(alt_header) > 1:
            alt_name = _SEP_NAMES.get(alt, f"`{alt}`")
            msg = (
                f"{name} must be {_SEP_NAMES[sep]}-separated with header `{expected}`; "
                f"found a {alt_name}-separated header `{header_line.strip()}`"
            )
            return Problem(display, line, msg, True, "separator")
    cols = ", ".join(f"`{c}`" for c in missing)
    msg = f"missing column {cols}: the header is `{_show_header(header, sep)}`, expected `{expected}`"
    if sep == "\t":
        msg += " (TAB-separated)"
    return Problem(display, line, msg, True, "missing column")


def read_table(
    path: str | os.PathLike,
    *,
    sep: str = ",",
    required_columns: Sequence[str] = (),
    display_name: str | None = None,
) -> pd.DataFrame:
    """Read a delimited text file as strings, whatever its encoding, or raise ``DataError``.

    Encodings tried: UTF-16 with a BOM, UTF-8 (with or without BOM), then GB18030 (which
    covers GBK and GB2312). Quoting follows pandas/``csv`` defaults, so files written by
    ``DataFrame.to_csv`` round-trip. Values are kept verbatim (``"NA"`` stays a string).

    Args:
        path: The file to read.
        sep: Field separator, ``","`` or ``"\\t"``.
        required_columns: Columns the header must contain; extra columns are kept.
        display_name: How to name the file in messages (defaults to ``str(path)``).

    Returns:
        A ``DataFrame`` of ``str``; ``attrs["encoding"]`` is the encoding used and
        ``attrs["lines"]`` the 1-based line number of each row.

    Raises:
        DataError: The file is missing or undecodable, a required column is missing, the
            separator is wrong, or a row is malformed; ``.problems`` lists them all.
    """
    display = display_name or str(path)
    table = _parse_table(
        Path(path), display, sep=sep, required=required_columns, missing_hint="check the path"
    )
    problems = table.problems + [p for _, p in table.bad_rows]
    if problems:
        raise DataError(_error_message(display, problems), problems)
    return table.frame()


# ------------------------------------------------------------------------------ images


def open_image(path: str | os.PathLike, *, draft_size: int | None = None) -> Image.Image:
    """Open any image Pillow can read as a fully loaded RGB image, or raise ``DataError``.

    Training, validation and retrieval all go through this one function, so the EXIF
    orientation (applied with ``ImageOps.exif_transpose``) and the RGB conversion are the
    same everywhere. Transparent pixels are composited on white rather than black because
    product photos are shot on white: a cut-out on black would look like another product.
    16-bit images are scaled to 8 bits instead of clipped (Pillow's ``convert`` clips them
    to almost pure white).

    Args:
        path: The image file.
        draft_size: If set, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose
            sides are still at least ``draft_size`` (Pillow's draft mode): much cheaper when
            the processor shrinks the image anyway. Other formats ignore it.
    """
    limit = max_image_pixels()  # outside the try: a bad setting is a ConfigError, not an image error
    try:
        return _decode_image(Path(path), draft=(draft_size, draft_size) if draft_size else None, limit=limit)
    except _IMAGE_ERRORS as exc:
        raise DataError(
            f"cannot read image {path}: {_image_error_text(exc)}; replace or remove the file"
        ) from exc


def max_image_pixels() -> int | None:
    """The largest image, in pixels, that is decoded; ``None`` means no limit.

    Pillow refuses images over ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million pixels)
    only with a warning, and raises only over twice that, because a tiny compressed file can
    expand to gigabytes (a "decompression bomb"). The package rejects everything over the
    limit with a :class:`DataError` naming the file. Product photos are far below it; a genuine
    larger image is accepted once the limit is raised with the environment variable
    ``CNCLIP_MAX_IMAGE_PIXELS`` (a whole number, or ``none`` to disable the check); a limit above
    Pillow's raises Pillow's own to match (``PIL.Image.MAX_IMAGE_PIXELS`` is process-wide).

    Raises:
        ConfigError: The environment variable is neither a whole number nor ``none``.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    if raw.lower() in ("none", "off", "0"):
        limit = None
    else:
        try:
            limit = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(
                f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels; "
                "give e.g. 200000000, or `none` to disable the decompression-bomb check"
            ) from None
        if limit < 0:
            raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive number of pixels (or `none`)")
    # Pillow's own guard must not fire below a limit the user raised (a lower one is ours to enforce).
    if limit is None or (Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _too_large_text(pixels: int | None, limit: int | None) -> str:
    size = f"{pixels:,} pixels" if pixels else "too many pixels"
    limit_text = f"the {limit:,}-pixel limit" if limit else "Pillow's limit"
    return (
        f"{size}, over {limit_text} that guards against decompression bombs; if the image is genuine, "
        f"downscale it or raise the limit with the environment variable {MAX_PIXELS_ENV} "
        f"(e.g. {MAX_PIXELS_ENV}={max(pixels or 0, (limit or 0) * 2) or 'none'}, or `none`)"
    )


def _decode_image(path: Path, *, draft: tuple[int, int] | None, limit: int | None) -> Image.Image:
    with Image.open(path) as im:
        # Checked on the header, before a single pixel is decoded.
        if limit is not None and im.width * im.height > limit:
            raise _ImageTooLarge(_too_large_text(im.width * im.height, limit))
        if draft and im.format == "JPEG":
            im.draft(None, draft)
        im.load()
        return _to_rgb(_upright(im))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF/XMP block leaves the image as stored.

    The pixels decoded fine, only the metadata saying how to turn them is broken, so the image
    is used un-rotated (what every viewer that ignores the tag shows). Any error of the
    orientation step counts: Pillow raises SyntaxError, struct.error, TypeError, ... depending
    on where the block is damaged. Training, checks and retrieval share this function.
    """
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - the whole class of metadata damage, see docstring
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range -> 8-bit
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def _image_error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, _ImageTooLarge):
        return text
    if isinstance(exc, Image.DecompressionBombError):
        # Pillow's own guard (twice its limit) fired first, e.g. after PIL.Image.MAX_IMAGE_PIXELS was lowered.
        found = [int(n) for n in re.findall(r"\d+", text)]
        return _too_large_text(found[0] if found else None, Image.MAX_IMAGE_PIXELS)
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if "cannot identify image file" in text:
        return "not an image Pillow can read"
    return text


def _check_one(path: Path, limit: int | None = None) -> str | None:
    try:
        # (1, 1) = 1/8 scale: every byte is still decoded, so truncation still fails, for less.
        _decode_image(path, draft=(1, 1), limit=limit)
    except _IMAGE_ERRORS as exc:
        return _image_error_text(exc)
    return None


def _check_images(image_dir: Path, names: Sequence[str], workers: int | None) -> dict[str, str | None]:
    """Decode every image (threads: Pillow releases the GIL while decoding)."""
    if not names:
        return {}
    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    paths = [image_dir / n for n in names]
    check = functools.partial(_check_one, limit=max_image_pixels())
    from tqdm.auto import tqdm

    # A bar on a terminal only (disable=None): logs and captured output stay quiet.
    bar = functools.partial(tqdm, total=len(paths), desc="checking images", unit="img", disable=None, leave=False)
    if workers <= 1:
        return dict(zip(names, bar(map(check, paths))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(zip(names, bar(pool.map(check, paths, chunksize=64))))


def _list_files(image_dir: Path) -> list[str]:
    """Every file under ``image_dir`` as a POSIX path relative to it; hidden folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(image_dir)
        for name in filenames:
            found.append((rel / name).as_posix() if rel.parts else name)
    return sorted(found)


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
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
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
                refused[name] = ("special file", "is a linked folder, which is not followed; copy its images into image/")
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
        msg = (f"title {extra}, so the row cannot be matched to its query; make the titles those of "
               f"{_QUERY} (any order), or remove the title column to fill the rows in query order")
        problems.append(Problem(display, lines[row], msg, True, "submission title"))
    if problems:
        raise DataError(_error_message(display, problems), problems)
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


# ------------------------------------------------------------------------- validation


def parse_val_size(val_size: float | int) -> float | int:
    """Return ``val_size`` as a fraction (float < 1) or a count (int); ConfigError otherwise.

    An integral float >= 1 counts as a count, because option parsers often type the field
    as float.
    """
    value: float | int | None = None
    if isinstance(val_size, bool):
        pass
    elif isinstance(val_size, numbers.Integral):
        value = int(val_size)
    elif isinstance(val_size, numbers.Real) and math.isfinite(val_size):
        value = float(val_size)
        if value >= 1 or value == 0:
            value = int(value) if value.is_integer() else None
    if value is None or value < 0:
        raise ConfigError(
            f"--val_size {val_size!r} is invalid: give a fraction of the training images in (0, 1), "
            "a whole number of images to hold out, or 0 for no validation split"
        )
    return value


def _n_held_out(val_size: float | int, n_images: int) -> int:
    """How many images to hold out; ConfigError when the split would leave no training image."""
    if val_size == 0:
        return 0
    if isinstance(val_size, float) and val_size < 1:
        count = min(max(1, round(val_size * n_images)), n_images - 1)
        if n_images < 2:
            raise ConfigError(
                f"--val_size {val_size} needs at least 2 usable training images, found {n_images}; "
                "use --val_size 0 for no validation split"
            )
        return count
    count = int(val_size)
    if count >= n_images:
        raise ConfigError(
            f"--val_size {count} holds out {count} images but train.csv has only {n_images} usable "
            "images; use a smaller count, a fraction such as 0.1, or 0 for no validation split"
        )
    return count


class _Scanner:
    """Checks one data folder, file by file, collecting problems into one report.

    The methods run in order (images, train, decode, queries, submit, answers, split)
    because each later check needs what an earlier one found.
    """

    def __init__(self, data_dir: str | os.PathLike, skip_bad_rows: bool):
        self.data_dir = str(data_dir)
        self.root = Path(data_dir)
        self.image_dir = self.root / _IMAGES
        self.skip_bad_rows = skip_bad_rows
        self.report = DataReport([], 0, 0, 0, 0, 0, 0, root=self.data_dir)
        self.problems = self.report.problems
        self.files: set[str] = set()  # every file under image/
        self.lower: dict[str, str] = {}  # lower-cased name -> name, for "did you mean"
        self.refused: dict[str, tuple[str, str]] = {}  # entries of image/ never read -> (kind, why)
        self.images: list[str] = []  # files with an image extension, sorted
        self.train_paths: set[str] = set()  # every image train.csv names, bad rows included
        self.bad: dict[int, list[Problem]] = defaultdict(list)  # train row -> its problems
        self.candidates: list[tuple[str, str, _Record]] = []  # rows that passed the text checks
        self.train: list[tuple[str, str, int]] = []  # kept (title, path, row)
        self.gallery: list[str] = []
        self.held_out: list[str] = []
        self.queries: list[str] = []
        self.n_queries: int | None = None
        self.decode_errors: dict[str, str | None] = {}
        self.sample_submit: pd.DataFrame | None = None
        self.answers: pd.DataFrame | None = None
        self.no_image_dir = False  # image/ missing: per-row "image not found" problems are not repeated

    def disp(self, name: str) -> str:
        """A path as the user would write it: under the folder they gave, not resolved."""
        return os.path.join(self.data_dir, name)

    def add(self, file: str, line: int | None, message: str, kind: str, fatal: bool = True) -> None:
        self.problems.append(Problem(file, line, message, fatal, kind))

    def read(
        self, name: str, sep: str, required: Sequence[str], missing_hint: str = "", keep_blank: bool = False
    ) -> _Table:
        table = _parse_table(
            self.root / name, self.disp(name), sep=sep, required=required, missing_hint=missing_hint,
            keep_blank=keep_blank,
        )
        if table.encoding:
            self.report.encodings[self.disp(name)] = table.encoding
        self.problems.extend(table.problems)
        return table

    def scan_images(self) -> None:
        # One listing serves every existence check instead of one stat() per row.
        if not self.image_dir.is_dir():
            self.no_image_dir = True
            self.add(self.disp(_IMAGES), None, f"image folder not found; {self._image_dir_hint()}", "missing file")
            return
        listed, self.refused = _walk_image_dir(self.image_dir, self.root)
        self._report_refused()
        self.files = set(listed)
        self.lower = {f.lower(): f for f in listed}
        self.images = [f for f in listed if f.lower().endswith(IMAGE_EXTENSIONS)]
        others = [f for f in listed if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            msg = f"ignored {len(others)} file(s) that are not images ({shown}); images must end in {_EXTS}"
            self.add(self.disp(_IMAGES), None, msg, "non-image file", fatal=False)
        if not self.images:
            self.add(self.disp(_IMAGES), None, f"contains no images ({_EXTS})", "missing file")

    def _report_refused(self) -> None:
        """Each entry of image/ that is never read, as a (skippable) problem naming it."""
        for name, (kind, message) in sorted(self.refused.items()):
            shown = name.encode("utf-8", "backslashreplace").decode("utf-8")
            where = self.disp(f"{_IMAGES}/{shown}")
            if self.skip_bad_rows:
                self.add(where, None, message + " (excluded)", kind, fatal=False)
                self.report.excluded_images += 1
            else:
                self.problems.append(Problem(where, None, message, True, kind, skippable=True))

    def _image_dir_hint(self) -> str:
        """Name a similarly named folder (``images/``, ``Image/``) when there is one."""
        try:
            folders = [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            folders = []
        lower = {name.lower(): name for name in folders}
        close = difflib.get_close_matches(_IMAGES, folders, n=1, cutoff=0.6) or (
            [lower[_IMAGES]] if _IMAGES in lower else []
        )
        if close:
            return f"did you mean {close[0]}/? rename it to {_IMAGES}/ (every image, training and test, goes there)"
        return "put every image (training and test) in image/ inside the data folder"

    def scan_train(self) -> None:
        hint = "it must hold the training pairs, TAB-separated with header `title<TAB>path`"
        table = self.read(_TRAIN, "\t", ("title", "path"), hint)
        where = self.disp(_TRAIN)
        for record, problem in table.bad_rows:
            self.bad[record.row].append(problem)
            last = record.values[-1].strip() if record.values else ""
            if last in self.files:
                self.train_paths.add(last)  # best guess, so a train image never leaks into the gallery
        if not table.usable:
            return
        if not table.records and not table.bad_rows:
            self.add(where, None, "has a header but no training pairs", "missing file")
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
                self.train_paths.add(path)
                if path in self.refused:
                    reason = self.refused[path][1].split(";")[0]
                    problems.append((f"image `{path}` is not read: {reason}", "missing image"))
                elif path not in self.files and self.no_image_dir:
                    continue  # one problem, the missing folder, explains every row: no per-row cascade
                elif path not in self.files:
                    hint = _missing_hint(path, self.files, self.lower)
                    problems.append(
                        (f"image `{path}` not found in {self.disp(_IMAGES)}{hint}", "missing image")
                    )
                elif key:
                    first = seen.setdefault((key, path), record.line)
                    if first != record.line:
                        msg = f"duplicate of line {first} (same title and path); delete one of them"
                        problems.append((msg, "duplicate row"))
            for message, kind in problems:
                self.bad[record.row].append(Problem(where, record.line, message, True, kind))
            if not problems:
                self.candidates.append((title, path, record))

    def decode(self, check_images: bool, num_workers: int | None) -> None:
        # The competition's gallery rule uses the full train.csv, skipped rows included.
        gallery = [f for f in self.images if f not in self.train_paths]
        if check_images:
            to_check = sorted({p for _, p, _ in self.candidates} | set(gallery))
            self.decode_errors = _check_images(self.image_dir, to_check, num_workers)
            self.report.images_decoded = len(self.decode_errors)
        errors = self.decode_errors
        for title, path, record in self.candidates:
            if errors.get(path):
                msg = f"image `{path}` cannot be read ({errors[path]}); replace the file or delete the row"
                self.bad[record.row].append(
                    Problem(self.disp(_TRAIN), record.line, msg, True, "corrupt image")
                )
            else:
                self.train.append((title, path, record.row))
        for row in sorted(self.bad):
            for problem in self.bad[row]:
                if self.skip_bad_rows:
                    problem.fatal = False
                    problem.message += " (row skipped)"
                else:
                    problem.skippable = True
                self.problems.append(problem)
        if self.skip_bad_rows:
            self.report.skipped_rows = len(self.bad)
            if self.bad and not self.train:
                # Not fatal here: retrieval needs no training pair; training refuses an empty set.
                msg = "every row was skipped: no training pairs are left"
                self.add(self.disp(_TRAIN), None, msg, "skipped row", fatal=False)
        for path in gallery:
            if not errors.get(path):
                self.gallery.append(path)
                continue
            msg = f"cannot be read ({errors[path]}); replace or delete this gallery image"
            where = self.disp(f"{_IMAGES}/{path}")
            if self.skip_bad_rows:
                self.add(where, None, msg + " (excluded from the gallery)", "corrupt image", fatal=False)
                self.report.excluded_images += 1
            else:
                self.problems.append(Problem(where, None, msg, True, "corrupt image", skippable=True))

    def scan_queries(self, require_queries: bool) -> None:
        # A submission needs one row per query, so nothing here is skippable.
        if not require_queries and not (self.root / _QUERY).exists():
            return
        table = self.read(
            _QUERY, ",", ("title",), "it must hold the test queries, a comma CSV with a `title` column",
            keep_blank=True,
        )
        self.problems.extend(p for _, p in table.bad_rows)
        if not table.usable:
            return
        where = self.disp(_QUERY)
        self.n_queries = len(table.records) + len(table.bad_rows)
        if not self.n_queries:
            self.add(where, None, "has a header but no queries", "missing file")
        ti = table.columns.index("title")
        for record in table.records:
            title = record.values[ti].strip()
            if not normalize_title(title):
                msg = "empty query title; every query needs its text (a submission has one row per query)"
                self.add(where, record.line, msg, "empty title")
            self.queries.append(title)

    def scan_submit(self) -> None:
        # Optional, but a template with the wrong row count would break the submission.
        if not (self.root / _SUBMIT).exists():
            return
        table = self.read(_SUBMIT, ",", ("path",), keep_blank=True)
        self.problems.extend(p for _, p in table.bad_rows)
        if not table.usable or table.bad_rows:
            return
        self.sample_submit = table.frame()
        n_rows = len(table.records)
        if self.n_queries is not None and n_rows != self.n_queries:
            msg = f"has {n_rows} rows but {_QUERY} has {self.n_queries}; it needs one row per query, in order"
            self.add(self.disp(_SUBMIT), None, msg, "row count")
        elif self.n_queries is not None and len(self.queries) == n_rows and all(self.queries):
            try:
                submission_order(self.sample_submit, self.queries, display=self.disp(_SUBMIT))
            except DataError as err:
                self.problems.extend(err.problems)

    def scan_answers(self, answers_file: str | os.PathLike | None = None) -> None:
        # DATA_DIR/test_answers.csv is written by the demo generator so demos can score
        # themselves; an explicit file (evaluate --answers) must exist. Errors would mis-score.
        name = str(answers_file) if answers_file is not None else _ANSWERS
        if not (self.root / name).exists():  # an absolute name replaces the root
            if answers_file is not None:
                self.add(self.disp(name), None, "answers file not found; pass a CSV with columns query,path",
                         "missing file")
            return
        table = self.read(name, ",", ("query", "path"))
        self.problems.extend(p for _, p in table.bad_rows)
        if not table.usable or table.bad_rows or self.no_image_dir:
            return  # without image/ every answer would be "not found": the folder problem says it once
        index = {p: i for i, p in enumerate(self.gallery)}
        qi, pi = table.columns.index("query"), table.columns.index("path")
        queries, paths, labels = [], [], []
        seen: dict[int, int] = {}
        for record in table.records:
            query, img, message = self._answer(record.values[qi], record.values[pi], seen, record.line, index)
            if message:
                self.add(self.disp(name), record.line, message, "bad answer")
            else:
                queries.append(query)
                paths.append(img)
                labels.append(index[img])
        if len(labels) == len(table.records):
            frame = table.frame()
            frame["query"] = np.asarray(queries, dtype=np.int64)
            frame["path"] = paths
            frame["label"] = np.asarray(labels, dtype=np.int64)
            self.answers = frame

    def _answer(self, raw_query, raw_path, seen, line, index) -> tuple[int, str, str | None]:
        """Check one answer row; returns ``(query, path, problem message or None)``."""
        raw_query = raw_query.strip()
        try:
            query = int(raw_query)
        except ValueError:
            return (
                -1,
                "",
                f"query `{raw_query}` is not a row number; give the 0-based row of the query in {_QUERY}",
            )
        if query < 0:
            return query, "", f"query {query} is negative; give the 0-based row of the query in {_QUERY}"
        if self.n_queries is not None and query >= self.n_queries:
            rows = f"rows 0-{self.n_queries - 1}"
            return query, "", f"query {query} is out of range: {_QUERY} has {self.n_queries} queries ({rows})"
        if query in seen:
            return (
                query,
                "",
                f"query {query} already answered at line {seen[query]}; keep one answer per query",
            )
        seen[query] = line
        img, why = _clean_path(raw_path)
        if img is None:
            return query, "", why
        if img in self.train_paths:
            return query, img, f"image `{img}` is named by {_TRAIN}, so it is not in the test gallery"
        if img not in self.files:
            hint = _missing_hint(img, self.files, self.lower)
            return query, img, f"image `{img}` not found in {self.disp(_IMAGES)}{hint}"
        if img not in index:
            error = self.decode_errors.get(img)
            reason = f"it cannot be read ({error})" if error else f"its extension is not one of {_EXTS}"
            return query, img, f"image `{img}` is not in the gallery: {reason}"
        return query, img, None

    def split(self, val_size: float | int, seed: int) -> None:
        # Grouped by image, so a held-out image is never trained on; sorted first, so the
        # split depends on the set of images and the seed, not on row order.
        images = sorted({p for _, p, _ in self.train})
        # Broken data: report that, not a split error about data that cannot be used anyway.
        n_held = _n_held_out(val_size, len(images)) if val_size and images and self.report.ok else 0
        order = np.random.default_rng(seed).permutation(len(images))
        held = {images[i] for i in order[:n_held]}
        self.held_out = sorted(held)
        captions: dict[str, set[str]] = defaultdict(set)
        for title, path, _ in self.train:
            captions[path].add(title)
        report = self.report
        report.multi_caption_images = sum(1 for titles in captions.values() if len(titles) > 1)
        report.n_val = sum(1 for _, p, _ in self.train if p in held)
        report.n_train = len(self.train) - report.n_val
        report.n_train_images = len(images) - len(held)
        report.n_val_images = len(held)
        report.n_queries = len(self.queries)
        report.n_gallery = len(self.gallery)
        report.n_val_gallery = len(held) + len(set(self.gallery) - held) if held else 0


def _scan(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int,
    seed: int,
    skip_bad_rows: bool,
    check_images: bool,
    require_queries: bool,
    num_workers: int | None,
    answers_file: str | os.PathLike | None = None,
) -> _Scanner:
    val_size = parse_val_size(val_size)
    scanner = _Scanner(data_dir, skip_bad_rows)
    if not scanner.root.is_dir():
        hint = "pass the folder that holds train.csv, test_query.csv and image/"
        scanner.add(scanner.data_dir, None, f"data folder not found; {hint}", "missing file")
        return scanner
    scanner.scan_images()
    scanner.scan_train()
    scanner.decode(check_images, num_workers)
    scanner.scan_queries(require_queries)
    scanner.scan_submit()
    scanner.scan_answers(answers_file)
    scanner.split(val_size, seed)
    return scanner


def _error_message(where: str, problems: Sequence[Problem], limit: int = 20) -> str:
    fatal = [p for p in problems if p.fatal] or list(problems)
    lines = [f"{where}: {len(fatal)} problem(s) must be fixed:"]
    lines += [f"  - {p}" for p in fatal[:limit]]
    if len(fatal) > limit:
        lines.append(f"  ... and {len(fatal) - limit} more (`cnclip-lora check-data` lists them all)")
    n_skippable = sum(p.skippable for p in fatal)
    if n_skippable:
        lines.append(
            f"{n_skippable} of them are bad training rows or gallery images: "
            f"fix them, or pass {_SKIP_FLAG} to skip them"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- public API

_STR, _INT = datasets.Value("string"), datasets.Value("int64")


def _dataset(columns: dict[str, list], types: dict[str, datasets.Value]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns, features=datasets.Features(types))


def check_data(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int = 0.1,
    seed: int = 42,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    answers_file: str | os.PathLike | None = None,
) -> DataReport:
    """Check a data folder and return every problem with the counts; never raises ``DataError``.

    Takes the same arguments as :func:`load_competition_data`; ``report.ok`` tells whether
    loading would succeed. ``report.summary()`` is what ``cnclip-lora check-data`` prints.
    """
    return _scan(
        data_dir,
        val_size=val_size,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        check_images=check_images,
        require_queries=require_queries,
        num_workers=num_workers,
        answers_file=answers_file,
    ).report


def load_competition_data(
    data_dir: str | os.PathLike,
    *,
    val_size: float | int = 0.1,
    seed: int = 42,
    skip_bad_rows: bool = False,
    check_images: bool = True,
    require_queries: bool = True,
    num_workers: int | None = None,
    answers_file: str | os.PathLike | None = None,
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

    Returns:
        A :class:`CompetitionData`.

    Raises:
        DataError: With ``.problems`` listing every fatal problem.
        ConfigError: ``val_size`` is invalid or leaves no training image.
    """
    scan = _scan(
        data_dir,
        val_size=val_size,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        check_images=check_images,
        require_queries=require_queries,
        num_workers=num_workers,
        answers_file=answers_file,
    )
    report = scan.report
    if not report.ok:
        raise DataError(_error_message(str(data_dir), report.problems), report.fatal_problems)

    held = set(scan.held_out)
    val_gallery = scan.held_out + [p for p in scan.gallery if p not in held] if held else []
    val_index = {p: i for i, p in enumerate(val_gallery)}
    train_rows = [r for r in scan.train if r[1] not in held]
    val_rows = [r for r in scan.train if r[1] in held]
    pair_types = {"title": _STR, "path": _STR, "row": _INT}
    return CompetitionData(
        root=scan.root,
        image_dir=scan.image_dir,
        train=_dataset(
            {
                "title": [t for t, _, _ in train_rows],
                "path": [p for _, p, _ in train_rows],
                "row": [r for _, _, r in train_rows],
            },
            pair_types,
        ),
        val=_dataset(
            {
                "title": [t for t, _, _ in val_rows],
                "path": [p for _, p, _ in val_rows],
                "row": [r for _, _, r in val_rows],
                "label": [val_index[p] for _, p, _ in val_rows],
            },
            {**pair_types, "label": _INT},
        ),
        queries=_dataset(
            {"title": scan.queries, "query": list(range(len(scan.queries)))}, {"title": _STR, "query": _INT}
        ),
        gallery=_dataset({"path": scan.gallery}, {"path": _STR}),
        val_gallery=_dataset({"path": val_gallery}, {"path": _STR}),
        sample_submit=scan.sample_submit,
        answers=scan.answers,
        report=report,
    )
