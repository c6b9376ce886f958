"""The engine's recommendation use cases: one answer alone or batched, the page's filters and fallback, unknown ids
named or ignored, one catalogue per dataset version, the best finished run, similar items and contributors."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.errors import ConfigError, ModelError, ResourceError
from recsys_core.recommend.catalogue import best_run, catalogue_of, ranked_runs
from recsys_core.recommend.topk import recommend
from recsys_core.recommend.usecases import (
    Limits,
    Query,
    UnknownIdError,
    contributors,
    recommend_batch,
    recommend_for,
    similar,
)
from recsys_core.training.experiment import make_model
from recsys_core.workspace.registry import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    ds = load_demo()
    return ds, make_model("ease", {}).fit(ds), make_model("popularity", {}).fit(ds)


def _query(ds, u: int) -> Query:
    """Users with and without filters: genres on odd users, a year range on every fourth, the popular tail hidden
    on every third."""
    return Query.of(user=str(ds.user_ids[u]), k=10, any_of={"genres": ["Drama", "Horror"]} if u % 2 else None,
                    between={"year": [1990, None]} if u % 4 == 0 else None, hide_popular_top=0.1 if u % 3 == 0 else 0)


def test_fifty_users_with_filters_answer_the_same_alone_batched_and_as_the_topk_engine(demo) -> None:
    ds, ease, _ = demo
    users = np.random.default_rng(0).choice(ds.n_users, 50, replace=False)
    queries = [_query(ds, int(u)) for u in users]
    batched = recommend_batch(ease, ds, queries)
    for u, query, together in zip(users, queries, batched, strict=True):
        alone = recommend_for(ease, ds, query)
        reference = recommend(ease, ds.history(int(u)), 10, filters=query.filters(), popularity=ds.item_popularity,
                              hide_popular_top=query.hide_popular_top, items=ds.items)
        assert together.items.tolist() == alone.items.tolist() == reference["item"].tolist()
        assert np.allclose(together.scores, reference["score"].to_numpy())
        assert not set(together.items.tolist()) & set(ds.history(int(u)).tolist())
        if query.any_of:
            assert all({"Drama", "Horror"} & set(ds.items["genres"].iat[i].split("|")) for i in together.items)


def test_a_history_of_ids_scores_as_the_user_and_unknown_ids_are_named_or_ignored(demo) -> None:
    ds, ease, _ = demo
    user = int(np.argmax(np.diff(ds.indptr) > 5))
    ids = [str(ds.item_ids[i]) for i in ds.history(user)]
    by_user = recommend_for(ease, ds, Query.of(user=str(ds.user_ids[user])))
    by_history = recommend_for(ease, ds, Query.of(history=ids))
    assert by_history.items.tolist() == by_user.items.tolist()
    with pytest.raises(UnknownIdError, match="'nope-1', 'nope-2'") as err:
        recommend_for(ease, ds, Query.of(history=[*ids, "nope-1", "nope-2"]))
    assert "ignore" in err.value.hint
    ignored = recommend_for(ease, ds, Query.of(history=[*ids, "nope-1"], unknown_items="ignore"))
    assert ignored.ignored == ("nope-1",) and ignored.items.tolist() == by_user.items.tolist()
    with pytest.raises(UnknownIdError, match="user 'no-such-user'"):
        recommend_for(ease, ds, Query.of(user="no-such-user"))


def test_bad_queries_are_refused_before_anything_is_scored(demo) -> None:
    ds, ease, _ = demo
    with pytest.raises(ConfigError, match="k must be between 1 and 50"):
        recommend_batch(ease, ds, [Query.of(user=str(ds.user_ids[0])), Query.of(user=str(ds.user_ids[1]), k=51)],
                        Limits(max_k=50))
    with pytest.raises(ResourceError, match="at most 3"):
        recommend_for(ease, ds, Query.of(history=list(ds.item_ids[:4])), Limits(max_history=3))
    with pytest.raises(ConfigError, match="either a user id or a history"):
        recommend_for(ease, ds, Query.of(user=str(ds.user_ids[0]), history=[str(ds.item_ids[0])]))
    with pytest.raises(ConfigError, match="no such column"):
        recommend_for(ease, ds, Query.of(user=str(ds.user_ids[0]), any_of={"colour": ["red"]}))
    with pytest.raises(ConfigError, match="unknown_items"):
        recommend_for(ease, ds, Query.of(history=["x"], unknown_items="maybe"))


def test_exclude_seen_off_may_return_history_items_and_an_empty_history_falls_back_to_popularity(demo) -> None:
    ds, ease, _ = demo
    user = int(np.argmax(np.diff(ds.indptr) > 20))
    seen = set(ds.history(user).tolist())
    kept = recommend_for(ease, ds, Query.of(user=str(ds.user_ids[user]), k=50, exclude_seen=False))
    assert set(kept.items.tolist()) & seen
    cold = recommend_for(ease, ds, Query.of(history=[], k=5))
    assert cold.fallback and cold.note and cold.items.tolist() == catalogue_of(ds).by_popularity[:5].tolist()
    body = cold.to_dict(catalogue_of(ds))
    assert body["fallback"] and [r["rank"] for r in body["recommendations"]] == [1, 2, 3, 4, 5]
    assert body["recommendations"][0]["label"] == catalogue_of(ds).labels[cold.items[0]]


def test_the_catalogue_is_built_once_per_dataset_version_with_one_label_per_item(demo) -> None:
    ds = demo[0]
    catalogue = catalogue_of(ds)
    assert catalogue_of(load_demo()) is catalogue  # another load of the same version: the same object
    assert catalogue.labels.tolist() == list(ds.labels) and catalogue.popularity.tolist() == ds.item_popularity.tolist()
    first = catalogue.item(0)
    assert first["item_id"] == ds.item_ids[0] and first["label"] == ds.labels[0] and "genres" in first


def test_the_page_query_travels_as_the_api_body(demo) -> None:
    ds = demo[0]
    query = _query(ds, 4)
    body = query.as_request()
    assert body["user"] == ds.user_ids[4] and body["filters"]["between"] == {"year": [1990.0, None]}
    assert Query.of(user=body["user"], k=body["k"], any_of=body["filters"].get("any_of"),
                    between=body["filters"]["between"], hide_popular_top=body.get("hide_popular_top", 0.0)) == query


def test_the_best_run_is_the_best_finished_one_with_files(tmp_path, demo) -> None:
    ws = Workspace(tmp_path / "ws")
    folders = []
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        folders.append(folder)
    first = ws.record_run(DEMO_NAME, "ease", {}, {"ndcg@10": 0.2}, "cpu", 1.0, folders[0])
    best = ws.record_run(DEMO_NAME, "ease", {}, {"ndcg@10": 0.3}, "cpu", 1.0, folders[1])
    ws.record_run(DEMO_NAME, "ease", {}, {"ndcg@10": 0.9}, "cpu", 1.0, folders[2], status="cancelled")
    assert [r.id for r in ranked_runs(ws, DEMO_NAME)] == [best, first]
    assert best_run(ws, DEMO_NAME).id == best
    assert best_run(ws, DEMO_NAME, fits=lambda folder: folder != folders[1]).id == first
    assert best_run(ws, "other") is None


def test_similar_items_as_plain_data_and_refused_for_popularity(demo) -> None:
    ds, ease, popularity = demo
    item = str(ds.item_ids[catalogue_of(ds).by_popularity[0]])
    near = similar(ease, ds, item, 5)
    assert near["item"]["item_id"] == item and len(near["similar"]) == 5
    assert item not in {r["item_id"] for r in near["similar"]}
    assert [r["similarity"] for r in near["similar"]] == sorted((r["similarity"] for r in near["similar"]), reverse=True)
    with pytest.raises(ModelError):
        similar(popularity, ds, item)
    with pytest.raises(UnknownIdError):
        similar(ease, ds, "nope")


def test_contributors_are_leave_one_out_score_deltas(demo) -> None:
    ds, ease, _ = demo
    user = int(np.argmax(np.diff(ds.indptr) > 8))
    history = ds.history(user).astype(np.int64)
    top = recommend_for(ease, ds, Query.of(user=str(ds.user_ids[user]), k=3))
    found = contributors(ease, catalogue_of(ds), history, top.items, budget_s=10.0)
    assert found["complete"] and found["checked"] == len(set(history.tolist()))
    target = int(top.items[0])
    best = found["items"][str(ds.item_ids[target])][0]
    without = history[history != ds.item_index[best["item_id"]]]
    drop = float(ease.score([history])[0, target] - ease.score([without])[0, target])
    assert best["delta"] == pytest.approx(drop, abs=1e-5) and drop > 0
    partial = contributors(ease, catalogue_of(ds), history, top.items, budget_s=0.0, chunk=2)
    assert not partial["complete"] and partial["checked"] == 2
