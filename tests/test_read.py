"""read_table: formats, detection of delimiter/header/encoding, and precise errors for bad files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import DataError, read_table
from recsys_core.data.read import INLINE_TEXT_BYTES
from recsys_core.errors import ResourceError

CSV = b"user,item,rating,timestamp\n1,10,5,978300760\n1,20,3,978300761\n2,10,4,978300762\n"


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(("text", "delimiter", "fmt"), [
    (b"user,item,rating\n1,10,5\n2,20,3\n", ",", "csv"),
    (b"user\titem\trating\n1\t10\t5\n2\t20\t3\n", "\t", "tsv"),
    (b"user;item;rating\n1;10;5\n2;20;3\n", ";", "ssv"),
    (b"user|item|rating\n1|10|5\n2|20|3\n", "|", "psv"),
    (b"1::10::5::978300760\n2::20::3::978300761\n", "::", "dat"),
])
def test_delimiters_detected(text: bytes, delimiter: str, fmt: str) -> None:
    raw = read_table(text, "ratings.txt")
    assert raw.delimiter == delimiter
    assert raw.format == fmt
    assert raw.n_rows == 2
    assert raw.frame.iloc[1, 1] == "20"


def test_header_detected_by_names_and_by_content() -> None:
    assert read_table(CSV, "r.csv").has_header
    assert list(read_table(CSV, "r.csv").frame.columns) == ["user", "item", "rating", "timestamp"]
    # Unknown names, but text above numbers: still a header.
    assert read_table(b"a,b,c\n1,2,3\n4,5,6\n", "x.csv").has_header
    headerless = read_table(b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n", "u.data")
    assert not headerless.has_header
    assert list(headerless.frame.columns) == [0, 1, 2, 3]
    assert headerless.n_rows == 2


def test_ids_keep_leading_zeros() -> None:
    raw = read_table(b"1::0120735::9::1363245118\n2::0002844::10::1362901837\n", "ratings.dat")
    assert raw.frame[1].tolist() == ["0120735", "0002844"]


def test_quoted_fields_with_delimiters() -> None:
    raw = read_table(b'user,item,comment\n1,10,"good, really"\n2,20,"meh"\n', "r.csv")
    assert raw.frame["comment"].tolist() == ["good, really", "meh"]


def test_latin1_fallback_and_utf8_bom() -> None:
    latin = "user,item,note\n1,10,caf\u00e9\n2,20,na\u00efve\n".encode("latin-1")
    raw = read_table(latin, "r.csv")
    assert raw.encoding == "latin-1"
    assert raw.frame["note"].tolist() == ["caf\u00e9", "na\u00efve"]
    bom = b"\xef\xbb\xbf" + CSV
    raw = read_table(bom, "r.csv")
    assert raw.encoding == "utf-8" and raw.frame.columns[0] == "user"


def test_latin1_past_the_sample_falls_back() -> None:
    # The first 64 KB are plain ASCII; the non-UTF-8 byte comes later.
    body = b"".join(b"%d,%d,3\n" % (i, i) for i in range(20000))
    data = b"user,item,title\n" + body.replace(b",3\n", b",x\n") + "9,9,\u00e9t\u00e9\n".encode("latin-1")
    raw = read_table(data, "r.csv")
    assert raw.encoding == "latin-1"
    assert raw.frame["title"].iloc[-1] == "\u00e9t\u00e9"


def test_spaces_around_fields_are_trimmed() -> None:
    raw = read_table(b"user, item, rating\n1, 10, 5\n2, 20, 3\n", "r.csv")
    assert list(raw.frame.columns) == ["user", "item", "rating"]
    assert raw.frame["item"].tolist() == ["10", "20"]


def test_path_bytes_and_file_object(tmp_path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(CSV)
    by_path = read_table(path)
    by_bytes = read_table(CSV, "r.csv")
    by_file = read_table(io.BytesIO(CSV), "r.csv")
    assert by_path.file == "r.csv"
    for raw in (by_path, by_bytes, by_file):
        assert raw.n_rows == 3
        pd.testing.assert_frame_equal(raw.frame, by_path.frame)


def test_parquet_and_json_lines() -> None:
    frame = pd.DataFrame({"userId": [1, 2], "movieId": ["0001", "0002"], "rating": [4.0, 5.0]})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    raw = read_table(buf.getvalue(), "r.parquet")
    assert raw.format == "parquet" and raw.frame["movieId"].tolist() == ["0001", "0002"]
    lines = b'{"user": "a", "item": "0001", "rating": 4}\n{"user": "b", "item": "0002", "rating": 5}\n'
    raw = read_table(lines, "r.jsonl")
    assert raw.format == "jsonl" and raw.frame["item"].tolist() == ["0001", "0002"]
    raw = read_table(json.dumps([{"user": 1, "item": 2}, {"user": 3, "item": 4}]).encode(), "r.json")
    assert raw.format == "json" and raw.n_rows == 2


def test_zip_picks_ratings_member_not_metadata() -> None:
    data = _zip({"ml/README": b"hello", "ml/u.item": b"1|Toy Story|x\n", "ml/u1.base": b"1\t2\t3\t4\n",
                 "ml/u.data": b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n"})
    raw = read_table(data, "ml-100k.zip")
    assert raw.member == "ml/u.data"
    assert raw.n_rows == 2


def test_blank_lines_keep_line_numbers() -> None:
    raw = read_table(b"user,item,rating\n\n1,10,5\n\n\n2,20,3\n", "r.csv")
    assert raw.n_rows == 2
    assert raw.line_of([0, 1]).tolist() == [3, 6]


# ---- errors ----------------------------------------------------------------------------------

def test_empty_file() -> None:
    with pytest.raises(DataError, match="empty") as err:
        read_table(b"", "r.csv")
    assert err.value.file == "r.csv"
    with pytest.raises(DataError, match="empty"):
        read_table(b"\n  \n\n", "r.csv")


def test_header_without_rows() -> None:
    with pytest.raises(DataError, match="no data rows"):
        read_table(b"user,item,rating\n", "r.csv")


def test_binary_file() -> None:
    with pytest.raises(DataError, match="binary") as err:
        read_table(bytes(range(256)) * 10, "r.csv")
    assert "CSV" in err.value.hint
    with pytest.raises(DataError, match="gzip"):
        read_table(b"\x1f\x8b\x08\x00" + b"x" * 50, "r.csv.gz")


def test_wrong_number_of_fields_names_lines() -> None:
    data = b"user,item,rating\n1,10,5\n2,20\n3,30,4\n4,40,4,extra\n"
    with pytest.raises(DataError) as err:
        read_table(data, "r.csv")
    e = err.value
    assert "2 row(s) have the wrong number of fields (expected 3" in e.message
    assert e.line == 3
    assert e.examples[0].startswith("line 3 (2 fields): 2,20")
    assert e.examples[1].startswith("line 5 (4 fields)")


def test_leading_blank_lines_do_not_shift_line_numbers() -> None:
    with pytest.raises(DataError) as err:
        read_table(b"\n\nuser,item,rating\n1,10,5\n2,20\n3,30,4\n", "r.csv")
    assert err.value.line == 5
    raw = read_table(b"\n\nuser,item,rating\n1,10,5\n3,30,4\n", "r.csv")
    assert raw.has_header and raw.line_of([0, 1]).tolist() == [4, 5]


def test_single_column_has_no_delimiter() -> None:
    with pytest.raises(DataError, match="delimiter"):
        read_table(b"a\nb\nc\n", "r.csv")


def test_header_and_rows_disagree() -> None:
    with pytest.raises(DataError, match="header names 2 columns but the rows below have 3"):
        read_table(b"user,item\n1,2,3\n4,5,6\n7,8,9\n", "r.csv")


def test_zip_without_usable_member() -> None:
    with pytest.raises(DataError, match="no usable interactions file") as err:
        read_table(_zip({"README": b"x", "notes.pdf": b"%PDF"}), "a.zip")
    assert "notes.pdf" in err.value.message
    with pytest.raises(DataError, match="Excel"):
        read_table(_zip({"xl/workbook.xml": b"<x/>", "[Content_Types].xml": b"<x/>"}), "book.xlsx")


@pytest.mark.parametrize("bad_name", ["../evil.csv", "/etc/ratings.csv", "a/../../x.csv", "C:/x.csv"])
def test_zip_path_traversal_rejected(bad_name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = _zip({"ratings.csv": CSV, bad_name: CSV})
    with pytest.raises(DataError, match="unsafe member name") as err:
        read_table(data, "a.zip")
    assert bad_name in err.value.message
    assert list(tmp_path.iterdir()) == []  # nothing was extracted anywhere


def test_corrupt_zip() -> None:
    with pytest.raises(DataError, match="zip"):
        read_table(b"PK\x03\x04" + b"\x00garbage" * 10, "a.zip")


def test_size_limit(tmp_path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(CSV + b"3,30,4,978300763\n" * 300)
    with pytest.raises(ResourceError, match="over the .* limit") as err:
        read_table(path, max_bytes=1000)
    assert "max_bytes" in err.value.hint
    with pytest.raises(ResourceError, match="over the .* limit"):
        read_table(path.read_bytes(), "r.csv", max_bytes=1000)
    # A small zip that inflates past the limit is refused too.
    with pytest.raises(ResourceError, match="over the .* limit"):
        read_table(_zip({"ratings.csv": CSV + b"1,10,5,1\n" * 5000}), "a.zip", max_bytes=20_000)
    assert read_table(path, max_bytes=10_000).n_rows == 303


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")


def test_bad_json_lines_names_line() -> None:
    data = b'{"user": 1, "item": 2}\n{"user": 1, "item": \n{"user": 3, "item": 4}\n'
    with pytest.raises(DataError) as err:
        read_table(data, "r.jsonl")
    assert err.value.line == 2


def test_bad_parquet() -> None:
    with pytest.raises(DataError, match="Parquet"):
        read_table(b"PAR1 this is not really parquet PAR1", "r.parquet")


@pytest.mark.parametrize("delimiter", [b"\t", b"::"])
def test_an_upload_parsed_in_the_child_reads_like_the_local_file(tmp_path, delimiter) -> None:
    """Uploads over INLINE_TEXT_BYTES go through the parse child (Arrow IPC back); a local path is read
    in-process. Headerless column labels, blank-line line numbers and the layout must agree."""
    rows = [delimiter.join(b"%d" % v for v in (k % 300, k % 77, k % 5 + 1, 881250949 + k)) for k in range(40_000)]
    data = b"\n".join(rows[:100]) + b"\n\n\n" + b"\n".join(rows[100:]) + b"\n"
    assert len(data) > INLINE_TEXT_BYTES
    path = tmp_path / "u.data"
    path.write_bytes(data)
    local, upload = read_table(path), read_table(data, "u.data")
    assert upload.describe() == local.describe() and list(upload.frame.columns) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(upload.frame, local.frame)
    assert upload.line_of(np.array([99, 100]))[1] == local.line_of(np.array([99, 100]))[1] == 103  # two blank lines
