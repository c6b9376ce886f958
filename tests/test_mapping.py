"""infer_mapping: header aliases, headerless MovieLens order, ambiguity and missing columns."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_core.data import ColumnMapping, DataError, infer_mapping, load_dataset, mapping_candidates, read_table


@pytest.mark.parametrize(("header", "expected"), [
    ("userId,movieId,rating,timestamp", ("userId", "movieId", "rating", "timestamp")),
    ("user_id,book_id,rating", ("user_id", "book_id", "rating", None)),
    ("customer_id,product_id,score,date", ("customer_id", "product_id", "score", "date")),
    ("uid,track,weight,ts", ("uid", "track", None, "ts")),  # a weight is a count (see test_count_names)
    ("Customer,Product,Stars,Datetime", ("Customer", "Product", "Stars", "Datetime")),
    ("user,item,title,rating_timestamp", ("user", "item", None, "rating_timestamp")),
    ("visitorid,itemid,event_time", ("visitorid", "itemid", None, "event_time")),
])
def test_header_names(header: str, expected: tuple) -> None:
    n = header.count(",") + 1
    frame = pd.DataFrame([["1"] * n, ["2"] * n], columns=header.split(","))
    m = infer_mapping(frame)
    assert (m.user, m.item, m.rating, m.timestamp) == expected


@pytest.mark.parametrize("header", ["uid,track,weight,ts", "user_id,artist_id,play_count", "user,item,plays,time",
                                    "customer,product,quantity,date"])
def test_count_names(header: str) -> None:
    n = header.count(",") + 1
    frame = pd.DataFrame([["1"] * n, ["2"] * n], columns=header.split(","))
    m = infer_mapping(frame)
    assert m.count == header.split(",")[2] and m.rating is None


def test_headerless_counts_are_told_from_ratings_by_their_values() -> None:
    plays = read_table(b"u1\ta1\t3\nu1\ta2\t352698\nu2\ta1\t12\n", "plays.tsv")
    m = infer_mapping(plays.frame)
    assert (m.rating, m.count) == (None, 2) and "read as a count" in m.reasons[0]
    stars = read_table(b"u1\ta1\t3\nu1\ta2\t10\nu2\ta1\t7\n", "stars.tsv")  # a 0-10 scale
    m = infer_mapping(stars.frame)
    assert (m.rating, m.count) == (2, None) and "read as a rating" in m.reasons[0]


def test_headerless_movielens_order() -> None:
    raw = read_table(b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n", "u.data")
    assert infer_mapping(raw.frame).as_dict() == {"user": 0, "item": 1, "rating": 2, "count": None, "timestamp": 3}


@pytest.mark.parametrize(("third", "role"), [("4", "rating"), ("881250949", "timestamp"),
                                             ("2013-02-28", "timestamp")])
def test_headerless_three_columns_by_content(third: str, role: str) -> None:
    frame = pd.DataFrame({0: ["1", "2"], 1: ["a", "b"], 2: [third, third]})
    m = infer_mapping(frame)
    assert getattr(m, role) == 2
    assert getattr(m, "timestamp" if role == "rating" else "rating") is None


def test_headerless_timestamp_before_rating_is_swapped() -> None:
    frame = pd.DataFrame({0: ["1", "2"], 1: ["a", "b"], 2: ["881250949", "881250950"], 3: ["4", "5"]})
    m = infer_mapping(frame)
    assert (m.rating, m.timestamp) == (3, 2)


def test_headerless_two_columns() -> None:
    m = infer_mapping(pd.DataFrame({0: ["u1", "u2"], 1: ["i1", "i2"]}))
    assert (m.user, m.item, m.rating, m.timestamp) == (0, 1, None, None)


def test_ambiguous_columns_raise() -> None:
    frame = pd.DataFrame({"user": ["1"], "userId": ["2"], "item": ["3"]})
    with pytest.raises(DataError, match="several columns could be the user: user, userId") as err:
        infer_mapping(frame, file="r.csv")
    assert "column mapping" in err.value.hint


def test_missing_item_column_raises() -> None:
    frame = pd.DataFrame({"user": ["1"], "thing": ["2"], "rating": ["3"]})
    with pytest.raises(DataError, match="no item column found; the columns are: user, thing, rating") as err:
        infer_mapping(frame, file="r.csv")
    assert "movieId" in err.value.hint or "itemid" in err.value.hint.lower()


def test_headerless_needs_names_when_columns_are_unclear() -> None:
    wide = pd.DataFrame({j: ["1", "2"] for j in range(6)})
    with pytest.raises(DataError, match="no header line and 6 columns") as err:
        infer_mapping(wide, file="r.csv")
    assert "header line" in err.value.hint
    texty = pd.DataFrame({0: ["1", "2"], 1: ["a", "b"], 2: ["good", "bad"], 3: ["x", "y"]})
    with pytest.raises(DataError, match="do not follow the order user, item, rating, timestamp"):
        infer_mapping(texty)


def test_candidates_best_first() -> None:
    frame = pd.DataFrame({"title": ["t"], "movieId": ["1"], "userId": ["2"], "rating": ["4"]})
    m = infer_mapping(frame)
    assert m.candidates["user"][0] == "userId"
    assert m.candidates["item"][0] == "movieId"
    assert set(m.candidates["rating"]) == set(frame.columns)
    assert mapping_candidates(pd.DataFrame({0: ["1"], 1: ["2"], 2: ["3"]}))["rating"][0] == 2


def test_user_override_in_load_dataset() -> None:
    data = b"a,b,c,d\n" + b"".join(b"u%d,i%d,%d,%d\n" % (u, i, 1 + (u + i) % 5, 1000 + i) for u in range(4)
                                  for i in range(5))
    with pytest.raises(DataError, match="no user column"):
        load_dataset(data, "x.csv")
    ds, report = load_dataset(data, "x.csv", mapping={"user": "a", "item": "b", "rating": "c", "timestamp": "d"})
    assert ds.n_users == 4 and ds.n_items == 5 and ds.has_ratings
    assert report.mapping == {"user": "a", "item": "b", "rating": "c", "count": None, "timestamp": "d"}
    swapped, _ = load_dataset(data, "x.csv", mapping=ColumnMapping(user="b", item="a"))
    assert swapped.n_users == 5 and not swapped.has_ratings


def test_override_with_unknown_column() -> None:
    with pytest.raises(DataError, match="the item column 'movie' is not in the file"):
        load_dataset(b"user,item\n1,2\n", "x.csv", mapping={"user": "user", "item": "movie"})
