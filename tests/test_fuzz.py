"""Property-based tests: arbitrary bytes and Unicode either parse or fail with the package's own error.

A user's CSV can hold anything (other encodings, stray quotes, NULs, binary junk); what must never
happen is a raw ``UnicodeDecodeError``, ``csv.Error``, ``KeyError`` or ``IndexError`` escaping to
the CLI as a traceback.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnclip_lora.data import check_data, load_competition_data, normalize_title, read_table
from cnclip_lora.errors import CnClipLoraError, DataError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like a CSV: separators, quotes, line breaks, Chinese, full-width forms, controls.
csv_alphabet = st.sampled_from(list("\t,\"\n\r '\\/.ab01titlepath云思木想ＸＬ２０，\x00\x0b\u200b\ufeff\u3000é"))
csv_text = st.text(csv_alphabet, max_size=200)
header_then_text = st.tuples(
    st.sampled_from(["title\tpath\n", "title,path\n", "title\n", "path\n", ""]), csv_text
).map("".join)
encoded = st.tuples(header_then_text, st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"])).map(
    lambda pair: pair[0].encode(pair[1], errors="replace")
)
any_bytes = st.one_of(st.binary(max_size=300), encoded)


@FUZZ
@given(raw=any_bytes, sep=st.sampled_from([",", "\t"]), required=st.sampled_from([(), ("title",), ("title", "path")]))
def test_read_table_parses_or_raises_data_error(tmp_path_factory, raw, sep, required):
    path = tmp_path_factory.mktemp("fuzz") / "table.csv"
    path.write_bytes(raw)
    try:
        frame = read_table(path, sep=sep, required_columns=required)
    except DataError as err:
        assert err.problems, "a DataError must list its problems"
        assert all(str(path) in str(p) for p in err.problems)
        return
    assert isinstance(frame, pd.DataFrame)
    assert set(required) <= set(frame.columns)
    assert len(frame.attrs["lines"]) == len(frame)
    assert all(isinstance(v, str) for col in frame.columns for v in frame[col])


@FUZZ
@given(text=st.text(max_size=300))
def test_normalize_title_is_idempotent_and_clean(text):
    out = normalize_title(text)
    assert normalize_title(out) == out
    assert out == out.strip() and "  " not in out
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in out)
    assert unicodedata.normalize("NFKC", out) == out


@FUZZ
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True), st.none(), st.binary(max_size=20)))
def test_normalize_title_accepts_any_value(value):
    assert isinstance(normalize_title(value), str)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    from conftest import build_dataset_dir

    return build_dataset_dir(tmp_path_factory.mktemp("fuzz-data") / "xfdata", n_train_images=4, n_gallery=3)


# Mostly well-formed training files, so the success path is exercised too: random titles (any
# Unicode), real or broken image names, the odd stray separator.
_names = st.sampled_from(
    [
        "train_000.jpg",
        "train_001.jpg",
        "train_002.jpg",
        "gal_000.jpg",
        "image/train_003.jpg",
        "missing.jpg",
        "../x.jpg",
        "",
        " train_001.jpg ",
    ]
)
_valid = st.sampled_from(["train_000.jpg", "train_001.jpg", "train_002.jpg"])
_title = st.one_of(
    st.text(max_size=30), st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x4E40), min_size=1)
)
_row = st.tuples(_title, st.one_of(_valid, _names)).map(lambda r: f"{r[0]}\t{r[1]}")
plausible_train = st.tuples(
    st.lists(_row, max_size=8), st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]), st.sampled_from(["\n", "\r\n"])
).map(lambda t: ("title\tpath" + t[2] + t[2].join(t[0])).encode(t[1], errors="replace"))


@FUZZ
@given(raw=st.one_of(any_bytes, plausible_train), skip=st.booleans())
def test_load_competition_data_on_random_train_csv(fuzz_root, raw, skip):
    (fuzz_root / "train.csv").write_bytes(raw)
    try:
        data = load_competition_data(fuzz_root, val_size=0, skip_bad_rows=skip, check_images=False)
    except CnClipLoraError as err:
        assert str(err)
        report = check_data(fuzz_root, val_size=0, skip_bad_rows=skip, check_images=False)
        assert not report.ok or "val_size" in str(err)
        return
    assert data.report.ok
    assert all((fuzz_root / "image" / p).is_file() for p in data.train["path"])
    # Titles are kept as written (stripped), never empty once normalised.
    assert all(t == t.strip() and normalize_title(t) for t in data.train["title"])


@FUZZ
@given(raw=any_bytes)
def test_load_competition_data_on_random_query_csv(fuzz_root, raw):
    (fuzz_root / "train.csv").write_text(
        "title\tpath\n红色T恤\ttrain_000.jpg\n蓝色T恤\ttrain_001.jpg\n", encoding="utf-8"
    )
    (fuzz_root / "test_query.csv").write_bytes(raw)
    try:
        data = load_competition_data(fuzz_root, val_size=0, check_images=False)
    except CnClipLoraError:
        return
    assert all(t == t.strip() and normalize_title(t) for t in data.queries["title"])


@pytest.mark.parametrize("raw", [b'"\r\x01', b'"a\nb",c\n', b'"\n'])
def test_header_with_a_quoted_line_break_is_a_data_error(tmp_path, raw):
    """Found by the fuzzer: the wrong-separator hint used to crash with csv.Error on such headers."""
    path = tmp_path / "test_query.csv"
    path.write_bytes(raw)
    with pytest.raises(DataError, match="missing column `title`|spans lines|file is empty"):
        read_table(path, sep=",", required_columns=("title",))
