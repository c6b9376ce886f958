"""The Train page's "Find the best settings" mode (views/ui/tune.py) with AppTest on the demo: a stored study shows
its trials table, the best-so-far curve and the importances (Plotly, axis titles, hover text); the button resumes
it as a workspace job whose new trials the page then lists; a running search is cancelled from the page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME
from recsys_core.training.tune import TUNE_KIND, read_study, studies_path, study_name, tune
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

JOB_S = 300  # the job's process imports torch and optuna first: minutes on a busy 2-core box


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


def _charts(at) -> dict[str, dict]:
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs}


def _trials(at):
    tables = [e.value for e in at.dataframe if "trial" in e.value.columns]
    assert len(tables) == 1
    return tables[0]


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.warning])


def _wait(predicate, timeout_s: float = JOB_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_tune_mode_shows_a_stored_study_resumes_it_as_a_job_and_cancels_a_search(ws_root: Path) -> None:
    at = open_app("views/train.py")
    ws = Workspace(ws_root)
    ds = ws.load_dataset(DEMO_NAME)
    tune(ds, "ease", budget_cpu_s=60, storage=studies_path(ws_root), dataset_name=DEMO_NAME, max_trials=3,
         final_seeds=())  # a study an earlier visit (or the CLI) left in the workspace
    at.radio(key="train_mode").set_value("Find the best settings").run()
    at.selectbox(key="tune_family").set_value("ease").run()
    assert not at.exception, at.exception
    assert at.number_input(key="tune_budget_min").value > 0
    assert "tune_members" not in [w.key for w in at.number_input]  # EASE trains one model: no members to ask for
    table = _trials(at)
    assert table["trial"].tolist() == [0, 1, 2] and "l2" in table.columns
    charts = _charts(at)
    history, importance = charts["Optimisation history"], charts["Parameter importances"]
    assert history["layout"]["xaxis"]["title"]["text"] == "trial"
    assert history["layout"]["yaxis"]["title"]["text"] == "validation NDCG@10"
    assert "l2 = " in history["data"][0]["customdata"][0] and "hovertemplate" in importance["data"][0]
    assert importance["layout"]["xaxis"]["title"]["text"].startswith("share of")
    best = read_study(studies_path(ws_root), study_name(DEMO_NAME, "ease"))["best"]
    assert f"Winner so far:** trial {best['number']}" in _texts(at)
    winner = next(trace for trace in history["data"] if trace["name"] == "winner")
    assert winner["x"] == [best["number"]] and winner["y"] == [pytest.approx(best["value"])]
    # EASE's l2 of 1,398 (trial 2) tops its default of 300 on the demo: the page says by how much, with the noise
    assert best["vs_defaults"] is not None and best["vs_defaults"]["trial"] == 2
    assert "two standard errors of the per-user difference" in _texts(at)

    # resume: one more trial, as a job in its own process; the winner is retrained and tested
    at.number_input(key="tune_max_trials").set_value(1).run()
    assert "3 trials so far" in at.button(key="tune_start").label
    at.button(key="tune_start").click().run()
    store = JobStore(ws)
    job = store.list(dataset=DEMO_NAME, kind=TUNE_KIND)[0]
    _wait(lambda: not store.get(job.id).active)
    assert store.get(job.id).status == "finished", store.get(job.id).error
    at.run()
    assert not at.exception, at.exception
    assert _trials(at)["trial"].tolist() == [0, 1, 2, 3]
    assert "test NDCG@10" in _texts(at)

    # a long search, cancelled from the page
    at.selectbox(key="tune_family").set_value("sasrec").run()
    at.number_input(key="tune_budget_min").set_value(30.0)
    at.number_input(key="tune_max_trials").set_value(0)
    at.number_input(key="tune_members").set_value(2)  # the winner's final runs: two members (EASE has no such field)
    at.button(key="tune_start").click().run()
    job = store.list(dataset=DEMO_NAME, kind=TUNE_KIND)[0]
    assert job.family == "sasrec" and job.params["overrides"] == {"members": 2}
    _wait(lambda: read_study(studies_path(ws_root), study_name(DEMO_NAME, "sasrec")).get("trials"))
    at.run()
    at.button(key=f"tune_cancel_{job.id}").click().run()
    t0 = time.monotonic()
    _wait(lambda: not store.get(job.id).active, timeout_s=30)
    assert time.monotonic() - t0 < 10 and store.get(job.id).status == "cancelled"
