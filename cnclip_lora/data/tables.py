"""Reading the data folder's delimited files: encoding sniffing and a CSV parser with line numbers.

A table is parsed into well-formed records, file-level problems (the table is unusable) and bad
rows (the caller decides whether they are fatal or skipped), never raising for bad content, so a
data check can report every problem in one pass.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cnclip_lora.data.report import Problem, error_message
from cnclip_lora.errors import DataError

__all__ = ["Record", "Table", "parse_table", "read_table"]

_SEP_NAMES = {"\t": "TAB", ",": "comma"}


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode a text file (tables, recipes); returns ``(text, encoding)`` or raises ``UndecodableText``.

    Strict UTF-8 (BOM or not) first, then GB18030, a superset of GBK and GB2312 that rarely
    accepts UTF-8 by accident. A file that is mostly valid UTF-8 with a few bad bytes is
    reported as damaged rather than silently decoded as GB18030 mojibake.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise UndecodableText(
                f"not valid UTF-16 ({exc.reason}); re-save the file as UTF-8", _line_of(raw, exc.start)
            ) from None
    try:
        text = raw.decode("utf-8-sig")
        encoding = "utf-8-sig" if raw.startswith(codecs.BOM_UTF8) else "utf-8"
    except UnicodeDecodeError as exc:
        loose = raw.decode("utf-8", errors="replace")
        n_bad = loose.count("\ufffd")
        n_good = sum(1 for ch in loose if ord(ch) > 127 and ch != "\ufffd")
        if n_good > n_bad:
            raise UndecodableText(
                "mostly UTF-8 but contains bytes that are not (the file is damaged); "
                "fix or delete that line and re-save the file as UTF-8",
                _line_of(raw, exc.start),
            ) from None
        try:
            text, encoding = raw.decode("gb18030"), "gb18030"
        except UnicodeDecodeError as exc2:
            raise UndecodableText(
                "cannot be decoded as UTF-8 or GBK/GB18030; re-save the file as UTF-8",
                _line_of(raw, exc2.start),
            ) from None
    if "\x00" in text:
        raise UndecodableText(
            "contains NUL characters (UTF-16 without a byte-order mark, or a binary file); re-save it as UTF-8 text",
            None,
        )
    return text, encoding


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


class UndecodableText(Exception):
    """A text file that is not UTF-8, UTF-16 (with its mark) or GB18030; ``line`` where the bytes break."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message, self.line = message, line


@dataclass
class Record:
    """One well-formed (or malformed) row, located in its file."""

    line: int  # 1-based line where the record starts
    row: int  # 0-based data row (what pandas' index would be)
    values: list[str]


@dataclass
class Table:
    """A parsed file: its well-formed records, and what is wrong with the file or its rows."""

    columns: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)  # well-formed rows only
    encoding: str | None = None
    problems: list[Problem] = field(default_factory=list)  # file-level: the table is unusable
    bad_rows: list[tuple[Record, Problem]] = field(default_factory=list)  # caller decides fatality

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


def parse_table(
    path: Path, display: str, *, sep: str, required: Sequence[str], missing_hint: str, keep_blank: bool = False
) -> Table:
    """Parse a delimited file with line numbers; never raises for bad content.

    ``keep_blank`` (files with one row per query): a whitespace-only or empty quoted row, and an
    empty line with rows after it, is a row (a blank title the caller reports), never dropped,
    so no later row shifts. Empty lines at the end of the file are still ignored.
    """
    table = Table()
    expected = _show_header(required, sep)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        table.problems.append(Problem(display, None, f"{what}; {missing_hint}", True, "missing file"))
        return table
    try:
        text, table.encoding = decode_text(path.read_bytes())
    except UndecodableText as exc:
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
                table.records.append(Record(blank_line, row, [""] * len(header)))
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
        record = Record(start, row, fields)
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
    table = parse_table(Path(path), display, sep=sep, required=required_columns, missing_hint="check the path")
    problems = table.problems + [p for _, p in table.bad_rows]
    if problems:
        raise DataError(error_message(display, problems), problems)
    return table.frame()
