"""Explain page with AppTest on the demo: zero clicks shows a waterfall, the reasons sentence, the method and
the deletion check; it opens on the user and item the Recommend page hands over; the global view draws."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401
from streamlit.proto.Metric_pb2 import Metric as MetricProto

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory: pytest.TempPathFactory):
    """One workspace for the module with an EASE run on the demo: what the automatic baseline job trains
    (tests/test_baseline_page.py follows that job), here trained once before the page opens."""
    root = tmp_path_factory.mktemp("explain") / "workspace"
    ws = Workspace(root)
    ws.ensure_demo()
    run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECSYS_WORKSPACE", str(root))
        yield root


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.error,
                                            *at.subheader])


def _charts(at) -> list[dict]:
    return [c.proto.spec for c in at.get("plotly_chart")]


def test_explain_page_works_with_zero_clicks_on_the_demo(ws_root: Path) -> None:
    at = open_app("views/explain.py", timeout_s=180)
    text = _texts(at)
    assert "is recommended mainly because of" in at.success[0].value
    assert "Method: exact Shapley values" in text  # the default user's history is short enough for exact values
    assert "Deletion check" in text
    specs = _charts(at)
    assert len(specs) == 2 and '"waterfall"' in specs[0] and '"Model score"' in specs[0]
    user = at.session_state["explain_user"]
    item = at.session_state["explain_item"]
    ds = load_demo()
    assert item not in set(ds.history(user).tolist())  # a recommendation, never a seen item
    assert at.selectbox(key="explain_item_select").value == item
    assert len(at.metric) == 3
    assert all(re.match(r"[+-][\d,.]+ places \(rank [\d,.]+\)$", m.proto.delta) for m in at.metric[1:])


def test_a_deletion_that_moves_nothing_says_no_change_not_plus_zero(ws_root: Path) -> None:
    ds = load_demo()
    user = int(np.flatnonzero(np.diff(ds.indptr) == 15)[0])  # its top item stays first without any one item
    at = open_app()
    at.session_state["explain_user"] = user
    at.switch_page("views/explain.py").run(timeout=180)
    at.slider(key="explain_k").set_value(1).run(timeout=180)
    assert not at.exception, at.exception
    top, random = at.metric[1].proto, at.metric[2].proto
    assert top.delta == "no change (rank 1)" and random.delta == "no change (rank 1.0)"  # was a green "↑ +0 places"
    for metric in (top, random):  # grey, no arrow
        assert MetricProto.MetricColor.Name(metric.color) == "GRAY"
        assert MetricProto.MetricDirection.Name(metric.direction) == "NONE"


def test_explain_page_opens_on_the_user_and_item_from_recommend(ws_root: Path) -> None:
    ds = load_demo()
    lengths = np.diff(ds.indptr)
    user = int(np.flatnonzero(lengths == 6)[0])
    unseen = np.setdiff1d(np.arange(ds.n_items), ds.history(user))
    item = int(unseen[np.argmin(ds.item_popularity[unseen])])  # surely not in the top 10: as if picked under filters
    at = open_app()
    at.session_state["explain_user"] = user  # what the Recommend page's "Explain it" button stores
    at.session_state["explain_item"] = item
    at.switch_page("views/explain.py").run(timeout=180)
    assert not at.exception, at.exception
    assert at.selectbox(key="explain_user_select").value == user
    assert at.selectbox(key="explain_item_select").value == item
    assert ds.title(item) in at.subheader[0].value
    other = int(np.flatnonzero(lengths == 7)[0])
    at.selectbox(key="explain_user_select").set_value(other).run(timeout=180)
    assert not at.exception, at.exception
    new_item = at.session_state["explain_item"]  # a new user opens on their own top-1 recommendation
    assert new_item != item and new_item not in set(ds.history(other).tolist())
    assert at.selectbox(key="explain_item_select").options[0].startswith("#1 ")


def _wait_until_ended(root: Path, timeout_s: float = 120):
    from recsys_core.workspace.jobs import JobStore

    store = JobStore(Workspace(root))
    deadline = time.monotonic() + timeout_s
    while (job := store.list(kind="global_view", limit=1)[0]).active:
        assert time.monotonic() < deadline, "the global view job did not end"
        time.sleep(0.2)
    return job


def test_global_view_runs_as_a_workspace_job_and_a_new_tab_shows_its_result(ws_root: Path) -> None:
    at = open_app("views/explain.py", timeout_s=180)
    at.slider(key="explain_global_users").set_value(20)
    at.button(key="explain_global_button").click().run(timeout=300)
    assert not at.exception, at.exception
    job = _wait_until_ended(ws_root)
    assert job.status == "finished" and job.owner == at.session_state["jobs_owner"]
    assert job.params["users"] == 20 and job.message == "explained 20 of 20 users"
    at.run(timeout=180)  # what the page's one-second poll does once the job has ended
    specs = _charts(at)
    assert len(specs) == 4 and all('"SHAP value (change in model score)"' in s for s in specs[2:])
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"item", "attribute"} and table["users"].max() <= 20
    other = open_app("views/explain.py", timeout_s=180)  # another tab, or this one reloaded: no click
    other.slider(key="explain_global_users").set_value(20).run(timeout=180)
    assert not other.exception, other.exception
    assert len(_charts(other)) == 4
    assert other.dataframe[0].value.equals(table)
    assert "measured on the last run" in other.button(key="explain_global_button").help


def test_text_tower_shows_word_attributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movie_fixtures import movie_dataset

    from recsys_core.data.item_schema import item_texts

    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    ws = Workspace(root)
    ds = movie_dataset()
    ws.save_dataset(ds, name="tiny-movies")
    run_experiment(ds, "text_tower", workspace=ws, dataset_name="tiny-movies")  # zero-shot: 58 item texts
    at = open_app()
    at.session_state["active_dataset"] = "tiny-movies"
    at.switch_page("views/explain.py").run(timeout=180)
    assert not at.exception, at.exception
    assert "Which words of the item" in _texts(at)  # the text tower section
    at.toggle(key="explain_text_toggle").set_value(True).run(timeout=180)
    assert not at.exception, at.exception
    specs = _charts(at)
    assert len(specs) == 3 and '"Word"' in specs[2]
    item = at.session_state["explain_item"]
    words = item_texts(ds.items)[item].split()  # the players are the item's own words
    assert all(f'"{w}"' in specs[2] for w in words), (words, specs[2][:500])
