"""Recommendation engine: seen items never come back, filters and "hide popular" hold, what-if and
cold-start equal scoring the edited history directly, neighbours and overlaps are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from movie_fixtures import index_of, movie_dataset

from recsys_core.data.dataset import Dataset
from recsys_core.data.item_schema import attribute_values
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.models.base import Recommender
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.models.itemknn import ItemKNN
from recsys_core.models.popularity import Popularity
from recsys_core.recommend.topk import (
    Filters,
    history_frame,
    overlap,
    pick_user,
    rank_changes,
    recommend,
    recommend_many,
    search_items,
    similar_items,
    similar_items_text,
    users_by_history_length,
)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return movie_dataset(n_users=60, per_user=8)


@pytest.fixture(scope="module")
def ease(ds: Dataset) -> EASE:
    return EASE(EASEConfig(l2=2.0)).fit(ds)


def _brute_top(model: Recommender, history, k: int, allowed: np.ndarray | None = None) -> list[int]:
    """Reference: score the history, drop seen / disallowed items, sort descending (stable on index)."""
    scores = model.score([np.asarray(history, dtype=np.int64)])[0].double().numpy()
    candidates = np.ones(len(scores), dtype=bool)
    candidates[np.asarray(history, dtype=np.int64)] = False
    if allowed is not None:
        candidates &= allowed
    idx = np.flatnonzero(candidates)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return order[:k].tolist()


def _assert_best(recs, model: Recommender, history, k: int, allowed: np.ndarray | None = None) -> None:
    """`recs` holds k best-scoring allowed unseen items, in score order (any order among exact ties)."""
    scores = model.score([np.asarray(history, dtype=np.int64)])[0].numpy()
    reference = _brute_top(model, history, k, allowed)
    items = recs["item"].to_numpy()
    assert len(items) == len(reference) and len(set(items)) == len(items)
    assert not set(items.tolist()) & set(np.asarray(history).tolist())
    if allowed is not None:
        assert allowed[items].all()
    assert scores[items] == pytest.approx(scores[reference])
    assert recs["score"].to_numpy() == pytest.approx(scores[items])


def test_seen_items_are_never_recommended_and_the_list_is_the_best_unseen(ds: Dataset, ease: EASE) -> None:
    for user in range(ds.n_users):
        history = ds.history(user)
        recs = recommend(ease, history, 10, items=ds.items, popularity=ds.item_popularity)
        _assert_best(recs, ease, history, 10)
        assert recs["rank"].tolist() == list(range(1, 11))
        assert np.all(np.diff(recs["score"].to_numpy()) <= 0)
    assert recs["title"].tolist() == [ds.title(i) for i in recs["item"]]
    assert recs["popularity"].tolist() == ds.item_popularity[recs["item"]].tolist()
    assert {"genres", "year", "item_id"} <= set(recs.columns)


def test_extra_exclusions_are_honoured(ds: Dataset, ease: EASE) -> None:
    history = ds.history(0)
    first = recommend(ease, history, 5)["item"].tolist()
    again = recommend(ease, history, 5, exclude=first[:2])["item"].tolist()
    assert again[:3] == first[2:5] and not set(again) & set(first[:2])


def test_batched_equals_one_by_one(ds: Dataset, ease: EASE) -> None:
    histories = [ds.history(u) for u in range(ds.n_users)]
    top = recommend_many(ease, histories, 7, batch_size=8)  # several batches
    for user, history in enumerate(histories):
        assert top.items[user].tolist() == recommend(ease, history, 7)["item"].tolist()
    assert not top.fallback.any()


def test_genre_and_year_filters(ds: Dataset, ease: EASE) -> None:
    filters = Filters(any_of={"genres": ["Romance", "War"]}, between={"year": (1990, 1999)})
    history = ds.history(0)  # a sci-fi fan: the filter forces other genres
    recs = recommend(ease, history, 10, filters=filters, items=ds.items)
    assert len(recs) > 0
    for genres, year in zip(recs["genres"], recs["year"], strict=True):
        assert {"Romance", "War"} & set(genres.split("|")) and 1990 <= year <= 1999
    allowed = np.array([bool({"Romance", "War"} & set(g.split("|"))) and 1990 <= y <= 1999
                        for g, y in zip(ds.items["genres"], ds.items["year"], strict=True)])
    _assert_best(recs, ease, history, 10, allowed)


def test_genre_filter_matches_whole_values_only(ds: Dataset, ease: EASE) -> None:
    # "Roman" must not match "Romance"; an unknown column is a clear error.
    assert recommend(ease, ds.history(1), 5, filters=Filters(any_of={"genres": ["Roman"]}), items=ds.items).empty
    with pytest.raises(ConfigError, match="no such column"):
        recommend(ease, ds.history(1), 5, filters=Filters(any_of={"mood": ["happy"]}), items=ds.items)
    assert "Sci-Fi" in attribute_values(ds.items) and "Sci-Fi|Thriller" not in attribute_values(ds.items)


def test_hide_popular_drops_the_top_fraction(ds: Dataset, ease: EASE) -> None:
    pop = ds.item_popularity
    hidden = set(np.argsort(-pop, kind="stable")[: round(0.2 * ds.n_items)].tolist())
    plain = recommend(ease, ds.history(2), 10, popularity=pop)
    assert set(plain["item"]) & hidden, "fixture: the unfiltered list should contain popular items"
    recs = recommend(ease, ds.history(2), 10, popularity=pop, hide_popular_top=0.2)
    assert not set(recs["item"]) & hidden
    assert recs["popularity"].max() <= np.sort(pop)[::-1][len(hidden) - 1]
    with pytest.raises(DataError, match="popularity"):
        recommend(ease, ds.history(2), 10, hide_popular_top=0.2)


def test_empty_history_falls_back_to_popularity_and_says_so(ds: Dataset, ease: EASE) -> None:
    assert float(ease.score([np.array([], dtype=np.int64)]).abs().max()) == 0.0  # the premise
    recs = recommend(ease, [], 5, popularity=ds.item_popularity, items=ds.items)
    assert recs.attrs["fallback"] and "popular" in recs.attrs["note"]
    assert recs["popularity"].tolist() == np.sort(ds.item_popularity)[::-1][:5].tolist()
    assert not recommend(ease, ds.history(0), 5, popularity=ds.item_popularity).attrs["fallback"]
    knn = ItemKNN().fit(ds)
    assert recommend(knn, [], 3, popularity=ds.item_popularity).attrs["fallback"]


def test_what_if_edit_equals_scoring_the_edited_history(ds: Dataset, ease: EASE) -> None:
    history = ds.history(4)
    before = recommend(ease, history, 10)
    removed = history[[0, 2]]
    edited = np.array([i for i in history if i not in removed] + [index_of(ds, "Titanic")])
    after = recommend(ease, edited, 10)
    _assert_best(after, ease, edited, 10)
    assert index_of(ds, "Titanic") not in after["item"].tolist()
    direct = ease.score([edited])[0]
    assert after["score"].to_numpy() == pytest.approx(direct.numpy()[after["item"].to_numpy()])
    changes = rank_changes(before, after)
    assert changes.loc[changes["status"] != "dropped", "item"].tolist() == after["item"].tolist()
    assert set(changes.loc[changes["status"] == "dropped", "item"]) == set(before["item"]) - set(after["item"])


def test_rank_changes_labels() -> None:
    changes = rank_changes([10, 20, 30, 40], [30, 10, 50, 40])
    assert changes["item"].tolist() == [30, 10, 50, 40, 20]
    assert changes["label"].tolist() == ["↑2", "↓1", "new", "=", "dropped"]
    assert changes["old_rank"].tolist()[:2] == [3, 1] and changes["rank"].isna().tolist()[-1]
    assert changes["rank_before"].tolist() == ["3", "1", "not in the list", "4", "2"]
    assert changes["rank_now"].tolist() == ["1", "2", "3", "4", "dropped out"]  # words, never a missing value
    assert changes["move"].tolist()[:2] == [2, -1]


def test_cold_start_liked_items_equal_the_engine(ds: Dataset, ease: EASE) -> None:
    liked = [index_of(ds, "Titanic"), index_of(ds, "Notting Hill")]
    recs = recommend(ease, liked, 5, items=ds.items)
    _assert_best(recs, ease, liked, 5)
    assert not recs.attrs["fallback"]
    romance = sum("Romance" in g for g in recs["genres"])
    assert romance >= 4  # the romance fans' neighbourhood


def test_popularity_model_recommends_the_same_unseen_items_for_everyone(ds: Dataset) -> None:
    model = Popularity().fit(ds)
    top = recommend_many(model, [ds.history(0), ds.history(1)], 3)
    unseen = np.setdiff1d(np.arange(ds.n_items), ds.history(0))
    assert ds.item_popularity[top.items[0]].tolist() == np.sort(ds.item_popularity[unseen])[::-1][:3].tolist()
    assert not set(top.items[0].tolist()) & set(ds.history(0).tolist())


def test_similar_items_cosine_self_excluded_and_symmetric(ds: Dataset, ease: EASE) -> None:
    vectors = ease.item_embeddings()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    item = index_of(ds, "Star Wars")
    near = similar_items(ease, item, 5, items=ds.items)
    assert item not in near["item"].tolist() and len(near) == 5
    cos = unit @ unit[item]
    cos[item] = -np.inf
    assert near["item"].tolist() == np.argsort(-cos, kind="stable")[:5].tolist()
    assert near["similarity"].to_numpy() == pytest.approx(cos[near["item"]], abs=1e-5)
    other = int(near["item"].iat[0])
    back = similar_items(ease, other, ds.n_items - 1)
    assert float(back.loc[back["item"] == item, "similarity"].iat[0]) == pytest.approx(near["similarity"].iat[0], abs=1e-5)
    assert "Sci-Fi" in near["genres"].iat[0]
    with pytest.raises(ModelError, match="no item embeddings whose cosine means similar"):
        similar_items(Popularity().fit(ds), item, 3)  # popularity declares similar_items=False


def test_similar_items_text_from_vectors() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    near = similar_items_text(vectors, 0, 3, item_ids=["a", "b", "c", "d"])
    assert near["item_id"].tolist() == ["b", "c", "d"]
    assert near["similarity"].iat[0] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    with pytest.raises(DataError, match="outside"):
        similar_items_text(vectors, 4, 3)


def test_overlap() -> None:
    result = overlap([1, 2, 3, 4], [3, 5, 1, 6])
    assert result["jaccard"] == pytest.approx(2 / 6)
    assert result["shared"] == [1, 3] and result["only_a"] == [2, 4] and result["only_b"] == [5, 6]
    assert overlap([], [])["jaccard"] == 1.0


def test_user_pickers_and_history_timeline() -> None:
    rng = np.random.default_rng(0)
    ds = movie_dataset(n_users=60, per_user=8)
    # Varied lengths: drop a random share of each user's rows.
    keep = rng.random(ds.n_interactions) < np.repeat(np.linspace(0.2, 1.0, ds.n_users), np.diff(ds.indptr))
    from recsys_core.data.dataset import build_dataset
    frame = ds.interactions[keep].assign(user=lambda f: ds.user_ids[f["user"]], item=lambda f: ds.item_ids[f["item"]])
    varied = build_dataset(frame, name="varied", items=ds.items)
    lengths = np.diff(varied.indptr)
    order = users_by_history_length(varied)
    assert np.all(np.diff(lengths[order]) >= 0)
    for seed in range(5):
        assert lengths[pick_user(varied, "long", seed)] >= np.quantile(lengths, 0.85)
        assert lengths[pick_user(varied, "short", seed)] <= np.quantile(lengths, 0.15)
        assert 0 <= pick_user(varied, "random", seed) < varied.n_users
    timeline = history_frame(varied, int(order[-1]))
    assert timeline["date"].is_monotonic_decreasing and len(timeline) == lengths[order[-1]]
    assert timeline["title"].iat[0] == varied.title(int(varied.history(int(order[-1]))[-1]))


def test_search_items_by_title(ds: Dataset) -> None:
    hits = search_items(ds.items, "star", popularity=ds.item_popularity)
    titles = [ds.title(i) for i in hits]
    assert set(titles) == {"Star Wars", "Star Trek: First Contact"}
    assert search_items(ds.items, "no such film").size == 0
