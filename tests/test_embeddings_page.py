"""Embeddings page with AppTest on the demo: a map with zero setup, search highlights the item's
neighbours from the model's own space, a user overlay, and a background t-SNE with progress."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.insight import project
from recsys_core.models.base import load_model
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

PAGE = "views/embeddings.py"


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One workspace for the module with an EASE run on the demo: what the automatic baseline job trains
    # (tests/test_baseline_page.py follows that job), here trained once before the page opens.
    root = tmp_path_factory.mktemp("emb") / "workspace"
    ws = Workspace(root)
    ws.ensure_demo()
    run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)
    return root


@pytest.fixture
def ws_root(shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECSYS_WORKSPACE", str(shared_root))
    return shared_root


def _figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def _xs(trace: dict) -> np.ndarray:
    """A trace's x values; plotly ships numpy arrays as base64 typed arrays."""
    x = trace["x"]
    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
    return np.asarray(x, dtype=float)


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _active_vectors(root: Path) -> np.ndarray:
    runs = Workspace(root).list_runs(dataset=DEMO_NAME)
    return load_model(runs[0].artifact_dir).item_embeddings()


def test_opens_on_a_pca_map_of_the_active_model_coloured_by_genre(ws_root: Path) -> None:
    at = open_app(PAGE)
    figs = _figures(at)
    assert len(figs) == 1
    fig, ds = figs[0], load_demo()
    assert fig["layout"]["title"]["text"].startswith("PCA of items")
    names = {t["name"] for t in fig["data"]}
    assert {"Drama", "Comedy", "Action"} <= names  # one legend entry per first genre
    assert {t["type"] for t in fig["data"]} == {"scattergl"}  # 2,414 points: WebGL
    assert sum(len(_xs(t)) for t in fig["data"]) == ds.n_items
    assert fig["layout"]["xaxis"]["title"]["text"] == "PCA 1"
    hovers = [h for t in fig["data"] for h in t["hovertext"]]
    assert any(h.startswith("Willy Wonka &amp; the Chocolate Factory (1971)<br>genres: ") for h in hovers)  # escaped for plotly
    assert 0.0 <= float(_metric(at, "Trustworthiness")) <= 1.0
    assert _metric(at, "Points") == f"{ds.n_items:,}"


def test_search_highlights_the_item_and_its_neighbours_from_the_original_space(ws_root: Path) -> None:
    at = open_app(PAGE)
    at.text_input(key="emb_search").input("matrix").run()
    assert not at.exception, at.exception
    ds = load_demo()
    item = at.selectbox(key="emb_search_pick").value
    assert ds.items["title"].iat[item] == "The Matrix"  # the most popular match comes first
    expected, sims = project.nearest_neighbours(_active_vectors(ws_root), item, 10)
    table = at.dataframe[0].value
    assert table["title"].tolist() == ds.labels[expected].tolist()
    np.testing.assert_allclose(table["cosine similarity"], sims, rtol=1e-5)
    assert table["rank on the map"].min() >= 1
    fig = _figures(at)[0]
    searched, nbrs = _trace(fig, "searched item"), _trace(fig, "nearest neighbours (original space)")
    assert searched["hovertext"][0].startswith("The Matrix (1999)<br>") and len(_xs(nbrs)) == 10

    at.text_input(key="emb_user").input(str(ds.user_ids[0])).run()  # overlay a user's history and top-10
    assert not at.exception, at.exception
    fig = _figures(at)[0]
    history = _trace(fig, "user history (oldest to newest)")
    assert len(_xs(history)) == min(len(ds.history(0)), 30)
    assert len(_xs(_trace(fig, "recommendations"))) == 10
    assert len(fig["layout"]["annotations"]) == 10  # an arrow from the latest item to each recommendation


def test_tsne_runs_in_the_background_with_progress_then_replaces_pca(ws_root: Path) -> None:
    at = open_app(PAGE)
    at.radio(key="emb_points").set_value("users")
    at.number_input(key="emb_max_users").set_value(150)
    at.button(key="FormSubmitter:emb_settings-Apply").click().run()
    at.selectbox(key="emb_method").set_value("tsne").run()
    assert not at.exception, at.exception
    job_id = at.session_state["emb_jobs"]["a"]
    assert any("PCA until t-SNE" in c.value for c in at.caption)  # PCA stands in while t-SNE runs
    assert _figures(at)[0]["layout"]["title"]["text"].startswith("PCA of users")
    store = JobStore(Workspace(ws_root))
    deadline = time.monotonic() + 120
    while store.get(job_id).active:
        assert time.monotonic() < deadline, "t-SNE job did not end"
        time.sleep(0.2)
    assert store.get(job_id).status == "finished", store.get(job_id).error
    at.run()
    assert not at.exception, at.exception
    fig = _figures(at)[0]
    assert fig["layout"]["title"]["text"].startswith("t-SNE of users")
    assert sum(len(_xs(t)) for t in fig["data"]) == 150
    assert _metric(at, "Points") == "150"
    project.clear_cache()  # a fresh server process: the map now comes from the workspace, not memory
    other = open_app(PAGE)
    other.radio(key="emb_points").set_value("users")
    other.number_input(key="emb_max_users").set_value(150)
    other.button(key="FormSubmitter:emb_settings-Apply").click().run()
    other.selectbox(key="emb_method").set_value("tsne").run()
    assert not other.exception, other.exception
    assert _figures(other)[0]["layout"]["title"]["text"].startswith("t-SNE of users")
    assert "emb_jobs" not in other.session_state or not other.session_state["emb_jobs"]  # nothing recomputed


def test_two_models_side_by_side_with_their_own_neighbours(ws_root: Path) -> None:
    run_experiment(load_demo(), "itemknn", workspace=Workspace(ws_root), dataset_name=DEMO_NAME)
    at = open_app(PAGE)
    at.toggle(key="emb_compare").set_value(True).run()
    at.text_input(key="emb_search").input("matrix").run()
    assert not at.exception, at.exception
    figs = _figures(at)
    assert len(figs) == 2 and all(f["layout"]["title"]["text"].startswith("PCA of items") for f in figs)
    first, second = (at.dataframe[i].value["title"].tolist() for i in (0, 1))
    assert first != second  # each map lists neighbours from its own model's space
    shared = len(set(first) & set(second))
    assert any(f"agree on {shared} of the 10" in c.value for c in at.caption)
