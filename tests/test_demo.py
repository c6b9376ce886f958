"""The built-in demo: real MovieTweetings ratings, small, licensed, and rebuildable from the source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.demo import DEMO_NAME, demo_dir, load_demo

K = 5  # the k-core bench/build_demo.py uses
SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movietweetings"


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_demo_is_a_few_thousand_users_and_items(demo):
    info = json.loads((demo_dir() / "build_info.json").read_text())
    assert demo.name == DEMO_NAME
    assert 1_000 <= demo.n_users <= 10_000
    assert 1_000 <= demo.n_items <= 10_000
    assert (demo.n_users, demo.n_items, demo.n_interactions) == (
        info["counts"]["users"], info["counts"]["items"], info["counts"]["interactions"])


def test_every_user_and_item_has_at_least_k_ratings(demo):
    assert np.diff(demo.indptr).min() >= K
    assert demo.item_popularity.min() >= K


def test_items_have_titles_years_and_genres(demo):
    items = demo.items
    assert (items["title"].str.len() > 0).all()
    assert not items["title"].str.contains(r"\(\d{4}\)$").any(), "year should be split off the title"
    assert items["year"].between(1890, 2014).all()
    assert (items["genres"] != "").mean() > 0.95
    genres = set("|".join(items["genres"]).split("|")) - {""}
    assert {"Drama", "Comedy", "Action"} <= genres


def test_imdb_ids_are_strings_with_leading_zeros(demo):
    ids = pd.Series(demo.item_ids)
    assert ids.map(type).eq(str).all()
    assert ids.str.fullmatch(r"\d{7}").all()
    assert ids.str.startswith("0").any()
    stored = pd.read_parquet(demo_dir() / "items.parquet")
    assert pd.api.types.is_string_dtype(stored["item_id"])


def test_users_are_renumbered_one_to_n(demo):
    assert set(demo.user_ids) == {str(i) for i in range(1, demo.n_users + 1)}


def test_ratings_and_timestamps_are_real(demo):
    stats = demo.stats()
    assert stats["rating_min"] >= 0 and stats["rating_max"] <= 10
    # MovieTweetings 100K was collected between 2013-02-28 and 2013-09-01.
    assert pd.Timestamp("2013-02-28") <= pd.Timestamp(stats["time_min"], unit="s")
    assert pd.Timestamp(stats["time_max"], unit="s") <= pd.Timestamp("2013-09-02")


def test_license_and_citation_ship_beside_the_data():
    folder = demo_dir()
    assert "Copyright (c) 2013 Simon Dooms" in (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "Dooms, S., De Pessemier, T., Martens, L." in readme
    assert "https://github.com/sidooms/MovieTweetings" in readme


def test_demo_is_small_enough_to_commit():
    total = sum(p.stat().st_size for p in demo_dir().iterdir())
    assert total < 3_000_000


def test_demo_carries_no_upstream_user_ids():
    frame = pd.read_parquet(demo_dir() / "interactions.parquet")
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame["timestamp"].dtype == np.int64


@pytest.mark.skipif(not SOURCE.is_dir(), reason="MovieTweetings source not in ../shared/data")
def test_build_script_reproduces_the_committed_demo(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_demo", Path(__file__).resolve().parents[1] / "bench" / "build_demo.py")
    build_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_demo)
    build_demo.build(SOURCE, tmp_path, K)
    for name in ("interactions.parquet", "items.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(demo_dir() / name))
    assert (tmp_path / "README.md").read_text() == (demo_dir() / "README.md").read_text()


@pytest.mark.skipif(not SOURCE.is_dir(), reason="MovieTweetings source not in ../shared/data")
def test_demo_ids_and_titles_match_the_source(demo):
    lines = (SOURCE / "snapshot-100K" / "movies.dat").read_text(encoding="utf-8").splitlines()
    source = {line.split("::")[0]: line.split("::")[1] for line in lines}
    for item_id, title, year in demo.items[["item_id", "title", "year"]].itertuples(index=False):
        assert source[item_id] == f"{title} ({year})"
    assert any(re.match(r"0\d{6}$", i) for i in source)  # the source has leading zeros, so must we
