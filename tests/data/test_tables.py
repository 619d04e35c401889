"""Tests for cnclip_lora.data.tables: encodings and CSV parsing with line numbers."""

from __future__ import annotations

import pytest

from cnclip_lora.data import read_table
from cnclip_lora.errors import DataError


def test_gb18030_only_characters(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("title\n𠮷野家牛丼\n".encode("gb18030"))
    with pytest.raises(UnicodeEncodeError):
        "𠮷".encode("gbk")
    frame = read_table(path, required_columns=["title"])
    assert frame["title"].tolist() == ["𠮷野家牛丼"] and frame.attrs["encoding"] == "gb18030"


def test_undecodable_and_damaged_files(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"title\n\x80\x80\xff\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 2: cannot be decoded as UTF-8 or GBK/GB18030"):
        read_table(path, required_columns=["title"])
    path.write_bytes("title\n连衣裙\n长袖T恤\n".encode() + b"\xff\n" + "女装\n".encode())
    with pytest.raises(DataError, match=r"bad\.csv, line 4: mostly UTF-8 but contains bytes that are not"):
        read_table(path, required_columns=["title"])


def test_read_table_keeps_strings_and_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('query,path,note\n0,a.jpg,NA\n\n1,"b,c.jpg",\n', encoding="utf-8")
    frame = read_table(path, required_columns=["query", "path"])
    assert frame.to_dict("list") == {"query": ["0", "1"], "path": ["a.jpg", "b,c.jpg"], "note": ["NA", ""]}
    assert frame.attrs["lines"] == [2, 4] and frame.attrs["encoding"] == "utf-8"
    with pytest.raises(DataError, match=r"a\.csv, line 1: missing column `title`"):
        read_table(path, required_columns=["title"])
    with pytest.raises(DataError, match=r"nope\.csv: not found"):
        read_table(tmp_path / "nope.csv")
