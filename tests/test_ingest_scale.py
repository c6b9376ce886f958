"""The ingest path built for 20M rows gives exactly what the simple definitions give.

Ids are dictionary-encoded once (Arrow) and the (user, time) order is one sort of a combined key; a big
local file is streamed from disk. Each test compares against the plain definition (pandas factorize of the
id strings, sorted; numpy lexsort; parsing the same bytes in memory) on small data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import LoadOptions, load_dataset, read_table
from recsys_core.data import source as source_module
from recsys_core.data.dataset import encode_ids, user_time_order

IDS = ["b", "a", " a", "007", "7", "é", "Z", "b", "10", "9", "a ", "ß", "z", "日本", "A"]


@pytest.mark.parametrize("values", [
    pd.Series(IDS),
    pd.Series(IDS, dtype=object),
    pd.Series(IDS, dtype="category"),
    pd.Series([3, 1, 20, 3, 100, 2]),
    pd.Series([1.5, 1.0, 2.0, 1.5]),
    pd.Series([True, False, True]),
    pd.Series([1, "1", 2.0, "x"], dtype=object),  # two spellings of one id merge, as strings do
])
def test_ids_encode_as_sorted_strings(values) -> None:
    codes, ids = encode_ids(values)
    want_codes, want_ids = pd.factorize(values.astype(str), sort=True)
    assert list(ids) == list(want_ids) and all(isinstance(i, str) for i in ids)
    assert np.array_equal(codes, want_codes) and codes.dtype == np.int32


def test_unused_categories_are_dropped_and_the_rest_renumbered() -> None:
    values = pd.Series(pd.Categorical(["c", "a", "c"], categories=["a", "b", "c", "d"]))
    codes, ids = encode_ids(values)
    assert list(ids) == ["a", "c"] and codes.tolist() == [1, 0, 1]


@pytest.mark.parametrize("span", [1_000, 2**62])  # the combined key, and the two-sort fallback when it overflows
def test_one_sort_orders_by_user_then_time_then_file_position(span) -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 5_000).astype(np.int32)
    ts = rng.integers(0, 30, 5_000).astype(np.int64) * (span // 30)  # many ties
    order = user_time_order(users, ts)
    assert np.array_equal(order, np.lexsort((np.arange(5_000), ts, users)))


def _csv(rows: int = 4_000, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    users = [f" u{u:03d}" if u % 7 == 0 else f"u{u:03d}" for u in rng.integers(0, 300, rows)]
    items = [f"{i:05d}" for i in rng.zipf(1.5, rows) % 2_000]
    ts = rng.integers(1_500_000_000, 1_500_000_100, rows)  # ties, so the tie rule shows
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in zip(users, items, rng.integers(1, 6, rows), ts)]
    return ("user,item,rating,timestamp\n" + "\n".join(lines) + "\n").encode()


def _reference(data: bytes):
    """The definition: every id string stripped, sorted distinct ids, rows ordered by (user, time, line)."""
    frame = pd.read_csv(pd.io.common.BytesIO(data), dtype=str)
    frame["user"], frame["item"] = frame["user"].str.strip(), frame["item"].str.strip()
    frame = frame.drop_duplicates(["user", "item"], keep="last")  # equal timestamps would need the tie rule
    return frame


def test_a_streamed_local_file_builds_what_its_bytes_build(tmp_path, monkeypatch) -> None:
    data = _csv()
    path = tmp_path / "ratings.csv"
    path.write_bytes(data)
    monkeypatch.setattr(source_module, "_STREAM_FROM", 1_000)  # stream anything above 1 KB from disk
    monkeypatch.setattr(source_module, "HEAD_BYTES", 4_096)
    from_disk, report_disk = load_dataset(path)
    from_bytes, report_bytes = load_dataset(data, "ratings.csv")
    assert report_disk.lines()[1:] == report_bytes.lines()[1:]
    assert list(from_disk.user_ids) == list(from_bytes.user_ids) and list(from_disk.item_ids) == list(from_bytes.item_ids)
    pd.testing.assert_frame_equal(from_disk.interactions, from_bytes.interactions)
    assert source_module.load_blob(path).path == path  # it really was streamed
    assert "007" not in from_disk.item_ids and "00007" in from_disk.item_ids  # leading zeros kept
    users = sorted({u.strip() for u in _reference(data)["user"]})
    assert list(from_disk.user_ids) == users


def test_a_streamed_file_with_blank_lines_names_the_right_line(tmp_path, monkeypatch) -> None:
    body = b"".join(b"u%d,i%d,4\n" % (k % 40, k % 31) for k in range(3_000))
    path = tmp_path / "r.csv"
    path.write_bytes(b"user,item,rating\n" + body + b"\n\n" + b"u1,i1,oops\n")
    monkeypatch.setattr(source_module, "_STREAM_FROM", 1_000)
    monkeypatch.setattr(source_module, "HEAD_BYTES", 2_048)
    raw = read_table(path)
    assert raw.line_of(np.array([raw.n_rows - 1]))[0] == 3_004  # header + 3000 rows + 2 blank lines + 1
    with pytest.raises(Exception, match="not a number") as caught:
        load_dataset(path)
    assert caught.value.line == 3_004 and caught.value.column == "rating"


def test_no_timestamps_keeps_file_order_and_says_so() -> None:
    data = b"user,item\n" + b"".join(b"u%d,i%d\n" % (k % 5, (k * 7) % 13) for k in range(200))
    ds, _ = load_dataset(data, "r.csv", options=LoadOptions(duplicates="keep_all"))
    assert ds.order == "none"
    rows = [line.split(",") for line in data.decode().splitlines()[1:]]
    first_user = min(u for u, _ in rows)
    want = [it for u, it in rows if u == first_user]
    assert [ds.item_ids[i] for i in ds.history(0)] == want


def test_a_local_parquet_file_is_read_from_disk_like_its_bytes(tmp_path, monkeypatch) -> None:
    data = _csv(rows=3_000, seed=2)
    frame = pd.read_csv(pd.io.common.BytesIO(data), dtype=str)
    path = tmp_path / "ratings.parquet"
    frame.to_parquet(path, index=False)
    monkeypatch.setattr(source_module, "_STREAM_FROM", 1_000)
    monkeypatch.setattr(source_module, "HEAD_BYTES", 512)
    assert source_module.load_blob(path).path == path
    from_disk, _ = load_dataset(path)
    from_bytes, _ = load_dataset(path.read_bytes(), "ratings.parquet")  # an upload: parsed in the child
    pd.testing.assert_frame_equal(from_disk.interactions, from_bytes.interactions)
    assert list(from_disk.user_ids) == list(from_bytes.user_ids)
