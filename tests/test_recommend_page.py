"""Recommend page with AppTest on the demo: zero setup shows a user's top K; what-if edits and the
cold-start list equal the engine; filters, similar items, side by side and exports work."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from apptest_util import APP, navigation_mode, open_app  # noqa: F401
from streamlit.testing.v1 import AppTest

from recsys_core.data import load_dataset
from recsys_core.data.dataset import build_dataset
from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.models.base import load_model
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.recommend.topk import recommend
from recsys_core.recommend.usecases import Query, recommend_for
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace
from tests.own_data import as_tsv, listening_log

PAGE = "views/recommend.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One workspace for the module with EASE and popularity runs (EASE is the best, so it is active)."""
    root = tmp_path_factory.mktemp("rec-page") / "workspace"
    ws = Workspace(root)
    ws.ensure_demo()
    ds = load_demo()
    runs = {f: run_experiment(ds, f, workspace=ws, dataset_name=DEMO_NAME) for f in ("ease", "popularity")}
    return {"root": root, "ds": ds, "ease": load_model(runs["ease"].artifact_dir), "runs": runs}


@pytest.fixture
def env(trained: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("RECSYS_WORKSPACE", str(trained["root"]))
    return trained


def _frame(at, key: str):
    """The table the page draws inside the container keyed `key`."""
    return at.container(key=key).dataframe[0]


def _items(at, key: str) -> list[str]:
    return _frame(at, key).value["item_id"].astype(str).tolist()


def test_zero_setup_shows_the_first_users_top_k_and_pickers_change_user(env: dict) -> None:
    ds, model = env["ds"], env["ease"]
    at = open_app(PAGE)
    user = at.selectbox(key="rec_user").value
    assert user == 0
    expected = recommend(model, ds.history(0), 10)
    assert _items(at, "rec_topk") == expected["item_id"].tolist()
    assert not set(_items(at, "rec_topk")) & set(ds.item_ids[ds.history(0)])
    history = _frame(at, "rec_history").value
    assert len(history) == len(ds.history(0)) and history["date"].is_monotonic_decreasing
    lengths = np.diff(ds.indptr)
    at.button(key="rec_long").click().run()
    long_user = at.selectbox(key="rec_user").value
    assert lengths[long_user] >= np.quantile(lengths, 0.85)
    assert _items(at, "rec_topk") == recommend(model, ds.history(long_user), 10)["item_id"].tolist()
    at.slider(key="rec_k").set_value(20).run()
    assert len(_frame(at, "rec_topk").value) == 20
    assert not at.exception, at.exception


def test_an_item_reads_the_same_in_the_tables_the_pickers_and_the_answer_the_cli_and_api_send(env: dict) -> None:
    """One label per item: the top-K and history tables, the pickers and the engine's answer (`to_dict`, what
    `recsys recommend` prints and `POST /v1/recommend` returns) name an item by the same string."""
    ds, model = env["ds"], env["ease"]
    catalogue = catalogue_of(ds)
    at = open_app(PAGE)
    user = at.selectbox(key="rec_user").value
    answer = recommend_for(model, ds, Query.of(user=str(ds.user_ids[user]), k=10)).to_dict(catalogue)["recommendations"]
    top = _frame(at, "rec_topk").value
    assert top["item_id"].tolist() == [r["item_id"] for r in answer]
    assert top["title"].tolist() == [r["label"] for r in answer]
    assert any(r["label"] != ds.title(ds.item_index[r["item_id"]]) for r in answer)  # the label, not the raw title
    first = answer[0]
    explain_picker = at.selectbox(key="rec_explain_item")
    assert explain_picker.value == ds.item_index[first["item_id"]] and explain_picker.options[0] == first["label"]
    assert first["label"] in at.selectbox(key="rec_similar_item").options
    newest_first = [catalogue.item(int(i))["label"] for i in ds.history(user)[::-1]]  # as GET /v1/items/{id} names it
    assert _frame(at, "rec_history").value["title"].tolist() == newest_first
    assert newest_first[0] in at.multiselect(key=f"rec_remove_{user}").options
    assert not at.exception, at.exception


def test_what_if_removal_changes_the_list_exactly_as_the_engine_says(env: dict) -> None:
    ds, model = env["ds"], env["ease"]
    at = open_app(PAGE)
    user = int(np.argmax(np.diff(ds.indptr) > 20))  # a user with a history worth editing
    at.selectbox(key="rec_user").set_value(user).run()
    history = ds.history(user)
    removed = [int(history[-1]), int(history[-2])]  # the newest two
    at.multiselect(key=f"rec_remove_{user}").set_value(removed).run()
    assert not at.exception, at.exception
    edited = np.array([i for i in history if int(i) not in removed])
    before = recommend(model, history, 10)
    after = recommend(model, edited, 10)
    assert before["item_id"].tolist() != after["item_id"].tolist(), "fixture: the edit should move the list"
    changes = _frame(at, "rec_whatif").value
    ranked = changes[changes["label"] != "dropped"]
    assert ranked["item_id"].tolist() == after["item_id"].tolist()
    old_rank = {item: r for r, item in enumerate(before["item_id"], 1)}
    for item, label, was in zip(ranked["item_id"], ranked["label"], ranked["rank_before"], strict=True):
        assert (label == "new") == (item not in old_rank)
        assert was == (str(old_rank[item]) if item in old_rank else "not in the list")
    dropped = changes.loc[changes["label"] == "dropped"]
    assert set(dropped["item_id"]) == set(before["item_id"]) - set(after["item_id"])
    assert set(dropped["rank_now"]) == {"dropped out"}
    assert changes.notna().all().all() and "+0" not in set(changes["label"])  # no "None" or "+0" as a value
    # The top-K itself still shows the unedited history's list.
    assert _items(at, "rec_topk") == before["item_id"].tolist()


def test_cold_start_and_filters(env: dict) -> None:
    ds, model = env["ds"], env["ease"]
    at = open_app(PAGE)
    cold = _frame(at, "rec_cold").value
    popular = np.sort(ds.item_popularity)[::-1][:10]
    assert cold["popularity"].tolist() == popular.tolist()  # nothing liked yet: popularity fallback, said so
    assert any("Most popular items shown" in str(i.value) for i in at.info)
    liked = [ds.item_index[i] for i in ds.item_ids[np.argsort(-ds.item_popularity)[[3, 8, 40]]]]
    at.multiselect(key="rec_cold_liked").set_value(liked).run()
    assert _items(at, "rec_cold") == recommend(model, liked, 10)["item_id"].tolist()
    at.multiselect(key="rec_genres").set_value(["Horror"]).run()
    at.slider(key="rec_hide_popular").set_value(10).run()
    top = _frame(at, "rec_topk").value
    assert len(top) == 10 and all("Horror" in g.split("|") for g in top["genres"])
    hidden = set(ds.item_ids[np.argsort(-ds.item_popularity, kind="stable")[: round(0.1 * ds.n_items)]])
    assert not set(top["item_id"]) & hidden
    assert not at.exception, at.exception


def test_similar_items_side_by_side_and_exports(env: dict) -> None:
    ds = env["ds"]
    at = open_app(PAGE)
    first = int(_frame(at, "rec_topk").value["item_id"].map(ds.item_index).iat[0])
    at.selectbox(key="rec_similar_item").set_value(first).run()
    near = _frame(at, "rec_similar").value
    assert len(near) == 10 and ds.item_ids[first] not in set(near["item_id"])
    assert near["similarity"].is_monotonic_decreasing
    popularity_run = next(r for r in Workspace(env["root"]).list_runs(dataset=DEMO_NAME) if r.model == "popularity")
    at.selectbox(key="rec_second").set_value(popularity_run).run()
    a, b = _frame(at, "rec_side_a").value, _frame(at, "rec_side_b").value
    shared = set(a["item_id"]) & set(b["item_id"])
    assert (a["shared"] == "✓").sum() == len(shared) == (b["shared"] == "✓").sum()
    assert any(f"{len(shared)} of 10 items in common" in str(c.value) for c in at.caption)
    assert {d.label for d in at.download_button} >= {"This user's list (CSV)", "This user's list (Parquet)"}
    at.button(key="rec_export_prepare").click().run()
    assert not at.exception, at.exception
    store = JobStore(Workspace(env["root"]))  # the export is a workspace job: its table is stored there
    job = store.list(kind="export", limit=1)[0]
    deadline = time.monotonic() + 120
    while store.get(job.id).active:
        assert time.monotonic() < deadline, "the export job did not end"
        time.sleep(0.2)
    assert store.get(job.id).status == "finished", store.get(job.id).error
    table = store.load_result(job.id)["table"]
    assert len(table) == 10 * ds.n_users
    mine = table[table["user_id"] == str(ds.user_ids[0])]
    assert mine["item_id"].tolist() == _items(at, "rec_topk")
    at.run()
    assert {"All users (CSV)", "All users (Parquet)"} <= {d.label for d in at.download_button}
    assert any(f"{10 * ds.n_users:,} rows ready" in str(c.value) for c in at.caption)
    reloaded = open_app(PAGE)  # a reload (or another tab) finds the prepared export without scoring again
    assert {"All users (CSV)", "All users (Parquet)"} <= {d.label for d in reloaded.download_button}
    assert len(store.list(kind="export")) == 1


def test_explain_hook_puts_user_and_item_in_session_state(env: dict) -> None:
    from views.ui.nav import PAGES

    at = open_app(PAGE)
    button = at.button(key="rec_explain")
    if not any(p.path == "views/explain.py" for p in PAGES):
        assert button.disabled
        return
    item = at.selectbox(key="rec_explain_item").value
    button.click().run()
    assert not at.exception, at.exception
    assert at.session_state["explain_user"] == 0 and at.session_state["explain_item"] == item


def test_page_is_registered_after_compare() -> None:
    from views.ui.nav import PAGES

    paths = [p.path for p in PAGES]
    assert paths.index("views/recommend.py") == paths.index("views/compare.py") + 1
    assert Path(__file__).resolve().parents[1].joinpath("views/recommend.py").is_file()


def _page_on(ds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The page on `ds`, saved in a fresh workspace with an EASE run (what the automatic baseline job would train,
    tests/test_baseline_page.py), and opened by a link naming it."""
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    Workspace(root).save_dataset(ds, name=ds.name)
    run_experiment(ds, "ease", workspace=Workspace(root), dataset_name=ds.name)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["dataset"] = ds.name
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def test_bare_dataset_without_metadata_timestamps_or_enough_items(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No titles, genres, years, ratings or timestamps, and fewer unseen items than K: still a page."""
    frame = pd.DataFrame({"user": np.repeat(["a", "b", "c", "d"], 3), "item": list("xyzxyqxrsyzq")})
    ds = build_dataset(frame, name="bare")
    at = _page_on(ds, tmp_path, monkeypatch)
    top = _frame(at, "rec_topk").value
    assert 0 < len(top) <= ds.n_items - 3 and set(top["title"]) <= {f"item {i}" for i in ds.item_ids}  # no titles
    assert not [m for m in at.multiselect if m.key == "rec_genres"]
    assert not {"date", "rating", "count"} & set(_frame(at, "rec_history").value.columns)  # no empty columns


def test_a_play_count_history_shows_the_counts_not_an_empty_rating(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A timestamp-less play-count export (sorted by user, then artist): the history lists each play count."""
    log = listening_log(n_users=40, n_items=50)
    ds, _ = load_dataset(as_tsv(log), "plays.tsv", name="plays")
    at = _page_on(ds, tmp_path, monkeypatch)
    user = ds.user_ids[at.selectbox(key="rec_user").value]
    shown = _frame(at, "rec_history").value
    assert "rating" not in shown.columns and shown["count"].notna().all()
    for key in ("rec_history", "rec_topk"):  # no years or genres in this file: no column of "None" or blanks
        table = _frame(at, key).value
        assert not {"year", "genres"} & set(table.columns) and not table.isna().any().any(), key
    assert any("the file's last row first" in str(c.value) for c in at.caption)  # shown newest-in-file first
    plays = log[log["user"] == user].set_index(log[log["user"] == user]["artist"].astype(str))["plays"]
    by_title = dict(zip(shown["title"], shown["count"], strict=True))
    assert by_title == {f"item {artist}": float(n) for artist, n in plays.items()}  # no titles: named by the id
