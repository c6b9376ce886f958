"""Property tests: any bytes given to load_dataset give a valid Dataset or a DataError, nothing else."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_core.data import DataError, LoadOptions, load_dataset

FILENAMES = ["r.csv", "r.tsv", "ratings.dat", "u.data", "r.jsonl", "r.json", "r.parquet", "a.zip", "data", "r.txt"]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_cells = st.one_of(
    st.integers(-5, 2_000_000_000).map(str),
    st.sampled_from(["1", "2", "3", "0001", "4.5", "", " ", "NA", "nan", "inf", "-0", "1e3", "\"", "\"a,b\"",
                     "2013-02-28", "2013-02-28T10:00:00Z", "yesterday", "é", "::", "|", "\t", ";", "user", "item",
                     "rating", "timestamp", "userId", "movieId", "{", "}", "[1]", "\x00", "\r"]),
    st.text(max_size=6),
)
_options = st.builds(LoadOptions, implicit_threshold=st.sampled_from([None, 3.0]),
                     min_user_interactions=st.integers(0, 3), min_item_interactions=st.integers(0, 3),
                     duplicates=st.sampled_from(["keep_last", "keep_first", "error", "keep_all"]))


def _check(data: bytes, filename: str, options: LoadOptions | None = None) -> None:
    try:
        ds, report = load_dataset(data, filename, options=options)
    except DataError as err:
        assert str(err)  # a message a person can read
        return
    inter = ds.interactions
    users, items = inter["user"].to_numpy(), inter["item"].to_numpy()
    assert ds.n_interactions == len(inter) == report.rows_kept > 0
    assert np.array_equal(np.unique(users), np.arange(ds.n_users))  # contiguous, none unused
    assert np.array_equal(np.unique(items), np.arange(ds.n_items))
    assert len(set(ds.user_ids)) == ds.n_users and len(set(ds.item_ids)) == ds.n_items
    assert (np.diff(users) >= 0).all()
    same = np.diff(users) == 0
    assert (np.diff(inter["timestamp"].to_numpy())[same] >= 0).all()  # each sequence in time order
    assert ds.indptr[-1] == ds.n_interactions and int(ds.item_popularity.sum()) == ds.n_interactions
    assert ds.items["item_id"].tolist() == [str(i) for i in ds.item_ids]
    assert report.rows_kept <= report.rows_read


@SETTINGS
@given(data=st.binary(max_size=3000), filename=st.sampled_from(FILENAMES))
def test_random_bytes(data: bytes, filename: str) -> None:
    _check(data, filename)


@SETTINGS
@given(rows=st.lists(st.lists(_cells, min_size=1, max_size=5), min_size=0, max_size=30),
       delimiter=st.sampled_from([",", "\t", "::", "|", ";", " "]),
       header=st.sampled_from([None, "user,item,rating,timestamp", "userId,movieId", "a,b,c"]),
       encoding=st.sampled_from(["utf-8", "latin-1"]), filename=st.sampled_from(FILENAMES),
       options=_options)
def test_random_tables(rows, delimiter, header, encoding, filename, options) -> None:
    lines = [delimiter.join(r) for r in rows]
    if header:
        lines.insert(0, header.replace(",", delimiter))
    data = "\n".join(lines).encode(encoding, errors="replace")
    _check(data, filename, options)


_ids = st.sampled_from(["1", "2", "3", "007", "u1", "u 2", "\u00e9", "x,y", "NA", "0"])
_junk = st.sampled_from(["", "five", "nan", " 3", "later", "2013-02-30"])
_TIME_KINDS = {
    "s": st.integers(0, 2_000_000_000).map(str),
    "ms": st.integers(10**12, 2 * 10**12).map(str),
    "date": st.dates().map(str),
    "iso": st.datetimes().map(lambda d: d.isoformat()),
}


@st.composite
def _table(draw) -> list[tuple[str, str, str, str]]:
    """Rows in one consistent format, with an occasional junk cell."""
    times = _TIME_KINDS[draw(st.sampled_from(sorted(_TIME_KINDS)))]
    rating = st.one_of(st.integers(0, 5).map(str), st.floats(0, 10, allow_nan=False).map(lambda f: f"{f:.2f}"))
    junk_rate = draw(st.sampled_from([0.0, 0.0, 0.05]))
    rows = []
    for _ in range(draw(st.integers(1, 40))):
        row = [draw(_ids), draw(_ids), draw(rating), draw(times)]
        if junk_rate and draw(st.floats(0, 1)) < junk_rate:
            row[draw(st.integers(0, 3))] = draw(_junk)
        rows.append(tuple(row))
    return rows


@SETTINGS
@given(rows=_table(), n_cols=st.integers(2, 4), delimiter=st.sampled_from([",", "\t", "::", "|", ";"]),
       header=st.booleans(), crlf=st.booleans(), options=st.one_of(st.none(), _options))
def test_well_formed_tables(rows, n_cols, delimiter, header, crlf, options) -> None:
    """Mostly valid interaction files: these exercise the success path and the value checks."""
    lines = ([delimiter.join(["user", "item", "rating", "timestamp"][:n_cols])] if header else [])
    quote = delimiter == ","
    for row in rows:
        cells = [f'"{c}"' if quote and "," in c else c.replace(delimiter, "") for c in row[:n_cols]]
        lines.append(delimiter.join(cells))
    data = ("\r\n" if crlf else "\n").join(lines).encode()
    _check(data, "ratings.csv", options)


def _valid_csv(n_users: int, n_items: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rows = ["user,item,rating,timestamp"]
    for _ in range(n_users * 4):
        rows.append(f"u{rng.integers(n_users)},i{rng.integers(n_items)},{rng.integers(1, 6)},"
                    f"{978300000 + rng.integers(10_000)}")
    return ("\n".join(rows) + "\n").encode()


@SETTINGS
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)),
                                                 max_size=4),
       truncate=st.integers(1, 10_000), filename=st.sampled_from(["r.csv", "r.txt", "data", "r.jsonl"]),
       options=_options)
def test_mutated_valid_files(seed, cuts, truncate, filename, options) -> None:
    data = _valid_csv(8, 6, seed)
    for pos, junk in cuts:
        pos %= len(data)
        data = data[:pos] + junk + data[pos:]
    _check(data[:truncate], filename, options)


@SETTINGS
@given(members=st.lists(st.tuples(st.sampled_from(["ratings.csv", "u.data", "movies.dat", "x/ratings.dat",
                                                    "../up.csv", "/abs.csv", "README", "a.bin"]),
                                   st.binary(max_size=300)), max_size=3, unique_by=lambda m: m[0]),
       seed=st.integers(0, 100), with_valid=st.booleans())
def test_random_zips(members, seed, with_valid) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if with_valid:
            zf.writestr("data/ratings.csv", _valid_csv(6, 5, seed))
        for name, content in members:
            zf.writestr(name, content)
    _check(buf.getvalue(), "upload.zip")
