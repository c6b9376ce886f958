"""The loader on real public data in ../shared/data (never copied into the repo); skipped when absent."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsys_core.data import leave_one_out, load_dataset, read_items

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _need(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def _check_invariants(ds) -> None:
    inter = ds.interactions
    assert inter["user"].between(0, ds.n_users - 1).all() and inter["item"].between(0, ds.n_items - 1).all()
    assert len(np.unique(inter["user"])) == ds.n_users and len(np.unique(inter["item"])) == ds.n_items
    assert ds.indptr[-1] == ds.n_interactions
    ts = inter["timestamp"].to_numpy()
    same_user = np.diff(inter["user"].to_numpy()) == 0
    assert (np.diff(ts)[same_user] >= 0).all()


def test_ml100k() -> None:
    folder = _need("ml-100k")
    ds, report = load_dataset(folder / "u.data", items=folder / "u.item")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert report.mapping == {"user": 0, "item": 1, "rating": 2, "count": None, "timestamp": 3}
    assert ds.title(ds.item_index["1"]) == "Toy Story (1995)"
    assert ds.items.loc[ds.item_index["1"], "genres"] == "Animation|Children's|Comedy"
    assert (ds.items["genres"] != "").mean() > 0.99
    assert ds.interactions["rating"].between(1, 5).all()
    assert not any("no metadata" in f for f in report.findings)
    _check_invariants(ds)
    assert len(leave_one_out(ds).test) == 943


def test_ml100k_latin1_titles() -> None:
    meta = read_items(_need("ml-100k", "u.item"))
    assert len(meta) == 1682
    assert meta["title"].str.contains("\u00e9").any()  # e.g. 'Misérables' decoded from latin-1


def test_ml100k_as_zip() -> None:
    folder = _need("ml-100k")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.user", "u.genre", "README"):
            zf.write(folder / name, f"ml-100k/{name}")
    ds, report = load_dataset(buf.getvalue(), "ml-100k.zip")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert "read 'ml-100k/u.data' from the archive" in report.findings
    assert ds.items.loc[ds.item_index["1"], "genres"] == "Animation|Children's|Comedy"


def test_ml1m_ratings_and_movies() -> None:
    folder = _need("ml-1m")
    ratings = folder / "ratings.dat"
    if not ratings.exists():
        ratings = _need("ml-1m", "ratings_first100000.dat")
    ds, report = load_dataset(ratings, items=folder / "movies.dat")
    if ratings.name == "ratings.dat":
        assert (ds.n_users, ds.n_interactions) == (6040, 1000209)
    else:
        assert (ds.n_users, ds.n_interactions) == (669, 100000)
    assert report.mapping["timestamp"] == 3
    assert ds.title(ds.item_index["1"]) == "Toy Story (1995)"
    assert ds.items.loc[ds.item_index["1"], "genres"] == "Animation|Children's|Comedy"
    _check_invariants(ds)


def test_ml1m_movies_latin1() -> None:
    meta = read_items(_need("ml-1m", "movies.dat"))
    assert len(meta) == 3883
    assert meta["title"].str.contains("\u00e9").any()
    assert meta.loc[meta["item_id"] == "1", "year"].item() == 1995


def test_ml1m_parquet_pairs() -> None:
    ds, report = load_dataset(_need("ml-1m", "ratings_user_movie_pairs.parquet"))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3706, 1000209)
    assert report.mapping == {"user": "userID", "item": "movieID", "rating": None, "count": None, "timestamp": None}
    assert not ds.has_ratings


def test_movietweetings_keeps_imdb_ids() -> None:
    folder = _need("movietweetings", "snapshot-10K")
    ds, report = load_dataset(folder / "ratings.dat", items=folder / "movies.dat")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3794, 3096, 10000)
    assert "0120735" in ds.item_index and all(len(i) == 7 for i in ds.item_ids)
    assert ds.title(ds.item_index["0120735"]).startswith("Lock, Stock and Two Smoking Barrels")
    assert ds.interactions["rating"].max() == 10
    assert not any("no metadata" in f for f in report.findings)
    _check_invariants(ds)
