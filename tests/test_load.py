"""load_dataset end to end: values, options (threshold, k-core, duplicates), metadata, and errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import DataError, LoadOptions, load_dataset, read_items
from recsys_core.errors import ResourceError


def _csv(rows: list[tuple], header: str = "user,item,rating,timestamp") -> bytes:
    return (header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)).encode()


def _grid(n_users: int = 4, n_items: int = 5) -> list[tuple]:
    """Every user rates every item once, at increasing times."""
    return [(f"u{u}", f"i{i}", 1 + (u + i) % 5, 1_000_000_000 + 10 * i + u) for u in range(n_users)
            for i in range(n_items)]


def test_values_and_order() -> None:
    rows = [("a", "x", 5, 300), ("a", "y", 3, 100), ("a", "z", 4, 200), ("b", "x", 2, 50), ("b", "y", 1, 60),
            ("b", "z", 1, 70)]
    ds, report = load_dataset(_csv(rows), "r.csv")
    assert ds.n_users == 2 and ds.n_items == 3 and ds.n_interactions == 6
    a = ds.user_index["a"]
    assert [ds.item_ids[i] for i in ds.history(a)] == ["y", "z", "x"]  # time order, not file order
    assert ds.interactions["rating"].dtype == np.float32
    assert report.rows_read == 6 and report.rows_kept == 6
    assert "timestamps read as unix seconds" in report.findings


@pytest.mark.parametrize(("values", "note"), [
    (["978300760", "978300761", "978300762"], "seconds"),
    (["978300760000", "978300761000", "978300762000"], "milliseconds"),
    (["2000-12-31T22:12:40Z", "2000-12-31T22:12:41", "2000-12-31 22:12:42"], "dates"),
])
def test_timestamp_units(values: list[str], note: str) -> None:
    rows = [("u", f"i{k}", 4, v) for k, v in enumerate(values)]
    ds, report = load_dataset(_csv(rows), "r.csv")
    assert sorted(ds.interactions["timestamp"].tolist()) == [978300760, 978300761, 978300762]
    assert any(note in f for f in report.findings)


def test_date_only_strings() -> None:
    rows = [("u", "a", 4, "2013-02-28"), ("u", "b", 4, "2013-03-01"), ("u", "c", 4, "2013-03-02")]
    ds, _ = load_dataset(_csv(rows), "r.csv")
    assert ds.interactions["timestamp"].tolist() == [1362009600, 1362096000, 1362182400]


def test_non_numeric_ratings_give_lines_and_examples() -> None:
    rows = _grid()
    rows[2] = ("u0", "i2", "five", 1)
    rows[7] = ("u1", "i2", "", 2)
    with pytest.raises(DataError) as err:
        load_dataset(_csv(rows), "r.csv")
    e = err.value
    assert "2 row(s) have a rating that is not a number" in e.message
    assert e.line == 4 and e.column == "rating"  # header is line 1, rows[2] is line 4
    assert e.examples == ["line 4: 'five'", "line 9: ''"]
    assert "line 4" in str(e) and "What to do" in str(e)


def test_unparsable_timestamps() -> None:
    rows = [("u", f"i{k}", 4, v) for k, v in enumerate(["2013-02-28", "yesterday", "2013-03-01", "not a date"])]
    with pytest.raises(DataError, match="2 row.* timestamp that cannot be read as a date") as err:
        load_dataset(_csv(rows), "r.csv")
    assert err.value.line == 3
    assert err.value.examples[1] == "line 5: 'not a date'"
    mixed = [("u", f"i{k}", 4, v) for k, v in enumerate(["978300760", "978300761", "soon"])]
    with pytest.raises(DataError, match="timestamp that is not a number") as err:
        load_dataset(_csv(mixed), "r.csv")
    assert err.value.line == 4


def test_empty_ids() -> None:
    rows = _grid()
    rows[0] = ("", "i0", 3, 1)
    with pytest.raises(DataError, match="an empty user id") as err:
        load_dataset(_csv(rows), "r.csv")
    assert err.value.line == 2


DUPES = [("a", "x", 1, 100), ("a", "y", 2, 110), ("a", "x", 5, 300), ("a", "z", 3, 120), ("b", "x", 4, 50),
         ("b", "y", 4, 60), ("b", "z", 4, 70), ("a", "x", 3, 200)]


def test_duplicates_keep_last_is_latest_in_time() -> None:
    ds, report = load_dataset(_csv(DUPES), "r.csv")
    a = ds.interactions[ds.interactions["user"] == ds.user_index["a"]]
    x = a[a["item"] == ds.item_index["x"]]
    assert x["rating"].tolist() == [5.0] and x["timestamp"].tolist() == [300]
    assert "dropped 2 duplicate (user, item) rows, keeping the latest of each pair" in report.findings


def test_duplicates_keep_first_and_keep_all() -> None:
    ds, report = load_dataset(_csv(DUPES), "r.csv", options=LoadOptions(duplicates="keep_first"))
    a = ds.interactions[ds.interactions["user"] == ds.user_index["a"]]
    assert a[a["item"] == ds.item_index["x"]]["timestamp"].tolist() == [100]
    assert any("earliest" in f for f in report.findings)
    ds, report = load_dataset(_csv(DUPES), "r.csv", options=LoadOptions(duplicates="keep_all"))
    assert ds.n_interactions == len(DUPES)
    assert "kept 3 rows that repeat a (user, item) pair (policy keep_all)" in report.findings


def test_duplicates_error_policy() -> None:
    with pytest.raises(DataError, match="3 rows repeat a \\(user, item\\) pair") as err:
        load_dataset(_csv(DUPES), "r.csv", options=LoadOptions(duplicates="error"))
    assert err.value.line == 2
    assert err.value.examples[0] == "line 2: user 'a', item 'x'"
    assert "keep_last" in err.value.hint


def test_implicit_threshold() -> None:
    ds, report = load_dataset(_csv(_grid(6, 6)), "r.csv", options=LoadOptions(implicit_threshold=4))
    assert ds.interactions["rating"].min() >= 4
    assert ds.n_interactions == sum(1 for r in _grid(6, 6) if r[2] >= 4)
    assert any(f.startswith("implicit threshold: removed 22 rows") for f in report.findings)
    with pytest.raises(DataError, match="needs a rating or count column"):
        load_dataset(_csv([r[:2] for r in _grid()], "user,item"), "r.csv", options=LoadOptions(implicit_threshold=4))


def test_k_core_reaches_fixed_point() -> None:
    # u0..u2 rate i0..i2 (a 3-core). u3 rates i0,i1 and i9; i9 has 1 rating.
    # Removing i9 leaves u3 with 2 -> removed too; nothing else changes.
    rows = [(f"u{u}", f"i{i}", 4, 100 * u + i) for u in range(3) for i in range(3)]
    rows += [("u3", "i0", 4, 1), ("u3", "i1", 4, 2), ("u3", "i9", 4, 3)]
    ds, report = load_dataset(_csv(rows), "r.csv",
                              options=LoadOptions(min_user_interactions=3, min_item_interactions=2))
    assert sorted(ds.user_ids) == ["u0", "u1", "u2"] and sorted(ds.item_ids) == ["i0", "i1", "i2"]
    assert np.diff(ds.indptr).min() >= 3 and ds.item_popularity.min() >= 2
    assert any("removed 3 rows in" in f for f in report.findings)


def test_nothing_left_after_filtering() -> None:
    with pytest.raises(DataError, match="no interactions are left after filtering") as err:
        load_dataset(_csv(_grid()), "r.csv", options=LoadOptions(min_user_interactions=50))
    assert "k-core" in err.value.message and "lower" in err.value.hint


def test_too_little_to_split() -> None:
    rows = [(f"u{u}", f"i{u % 3}", 4, u) for u in range(10)]  # one interaction per user
    with pytest.raises(DataError, match="every user has fewer than 3 interactions") as err:
        load_dataset(_csv(rows), "r.csv")
    assert "most any user has is 1" in err.value.message
    one_item = [(f"u{u}", "only", 4, t) for u in range(3) for t in range(3)]
    with pytest.raises(DataError, match="only 1 distinct item"):
        load_dataset(_csv(one_item), "r.csv", options=LoadOptions(duplicates="keep_all"))


def test_bad_options() -> None:
    with pytest.raises(DataError, match="unknown duplicate policy 'newest'"):
        load_dataset(_csv(_grid()), "r.csv", options=LoadOptions(duplicates="newest"))
    with pytest.raises(DataError, match="min_user_interactions"):
        load_dataset(_csv(_grid()), "r.csv", options=LoadOptions(min_user_interactions=-1))


def test_max_bytes_option() -> None:
    with pytest.raises(ResourceError, match="over the"):
        load_dataset(_csv(_grid()), "r.csv", options=LoadOptions(max_bytes=100))


def test_metadata_join_and_report() -> None:
    items = b"item_id,title,genres\ni0,Zero,Drama\ni1,One,Comedy|Drama\ni2,Two,\n"
    ds, report = load_dataset(_csv(_grid()), "r.csv", items=items, items_filename="items.csv")
    assert ds.title(ds.item_index["i1"]) == "One"
    assert ds.items.loc[ds.item_index["i1"], "genres"] == "Comedy|Drama"
    assert ds.title(ds.item_index["i4"]) == "i4"  # no metadata: falls back to the id
    assert any(f.startswith("2 of 5 items have no metadata (e.g. i3, i4)") for f in report.findings)
    frame = pd.DataFrame({"item_id": ["i0"], "title": ["Zero"]})
    ds2, _ = load_dataset(_csv(_grid()), "r.csv", items=frame)
    assert ds2.title(ds2.item_index["i0"]) == "Zero"


def test_generic_metadata_needs_an_id_column() -> None:
    with pytest.raises(DataError, match="no item id column"):
        read_items(b"name,colour\nx,red\n", "meta.csv")
    meta = read_items(b"movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n", "movies.csv")
    assert meta.loc[0, "item_id"] == "1" and meta.loc[0, "year"] == 1995


def test_zip_with_ratings_and_movies() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "".join(f"{u}::{i}::{1 + i % 5}::{978300760 + i}\n"
                                                  for u in range(1, 4) for i in range(1, 5)))
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                        "2::Jumanji (1995)::Adventure\n".encode("latin-1"))
        zf.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
    ds, report = load_dataset(buf.getvalue(), "ml-1m.zip")
    assert ds.n_users == 3 and ds.n_items == 4
    assert ds.title(ds.item_index["1"]) == "Toy Story (1995)"
    assert "read 'ml-1m/ratings.dat' from the archive" in report.findings
    assert any("archive member 'ml-1m/movies.dat'" in f for f in report.findings)
    assert ds.name == "ratings"


def test_json_numeric_ids_become_strings() -> None:
    lines = "".join(f'{{"user": {u}, "item": {i}, "rating": 4.5}}\n' for u in range(3) for i in range(4))
    ds, _ = load_dataset(lines.encode(), "events.jsonl")
    assert set(ds.user_ids) == {"0", "1", "2"} and ds.has_ratings
    assert not ds.stats()["has_timestamps"]


def test_report_reads_as_text() -> None:
    _, report = load_dataset(_csv(DUPES), "r.csv")
    text = str(report)
    assert "r.csv: CSV, delimiter ',', with header, utf-8, 8 rows" in text
    assert "columns: user='user', item='item', rating='rating', timestamp='timestamp'" in text
    assert "rows read: 8, kept: 6" in text


def test_parquet_datetime_column_and_uploaded_file_object() -> None:
    frame = pd.DataFrame({"customer_id": ["c1"] * 3 + ["c2"] * 3, "product_id": ["p1", "p2", "p3"] * 2,
                          "purchased_at": pd.to_datetime(["2020-01-01 00:00:10"] * 6, utc=True)
                          + pd.to_timedelta(range(6), unit="s")})
    buf = io.BytesIO()
    frame.to_parquet(buf)

    class Upload(io.BytesIO):  # what Streamlit's file_uploader hands over: bytes with a name
        name = "orders.parquet"

    ds, report = load_dataset(Upload(buf.getvalue()))
    assert report.mapping == {"user": "customer_id", "item": "product_id", "rating": None,
                              "timestamp": "purchased_at", "count": None}
    assert ds.interactions["timestamp"].tolist() == [1577836810 + k for k in range(6)]
    assert ds.name == "orders"


def test_unreadable_metadata_in_zip_is_reported_not_fatal() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ratings.csv", _csv(_grid()))
        zf.writestr("movies.csv", b"name,colour\nx,red\n")  # no id column
    ds, report = load_dataset(buf.getvalue(), "a.zip")
    assert ds.n_interactions == 20
    assert any(f.startswith("item metadata in archive member 'movies.csv' was skipped: no item id column")
               for f in report.findings)
