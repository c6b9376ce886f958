"""Train and Compare pages with AppTest on the demo data: train a model from the form and see it
recorded; the leaderboard ranks runs and breaks them down by user segment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.error])


def test_train_page_trains_from_the_form_and_records_the_run(ws_root: Path) -> None:
    at = open_app("views/train.py")
    assert "No runs on this dataset yet" in _texts(at)
    at.selectbox(key="train_family").set_value("ease")
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    job = at.session_state["train_job"]
    job.join(120)
    assert job.state == "finished", job.error
    at.run()
    assert not at.exception, at.exception
    runs = Workspace(ws_root).list_runs(dataset=DEMO_NAME)
    assert [r.model for r in runs] == ["ease"]
    assert f"NDCG@10 {runs[0].metrics['ndcg@10']:.4f}" in _texts(at)
    table = at.dataframe[0].value
    assert table["model"].tolist() == ["ease"]


def test_train_form_lists_every_model_family_with_its_settings(ws_root: Path) -> None:
    at = open_app("views/train.py")
    options = at.selectbox(key="train_family").options
    for family in ("bert4rec", "sasrec", "ease", "itemknn", "popularity"):
        assert any(family in o.lower().replace("-", "").replace("+", "") or family in o for o in options), family
    at.selectbox(key="train_family").set_value("bert4rec").run()
    from recsys_core.models.bert4rec import BERT4RecConfig

    max_len = at.number_input(key="train_cfg_bert4rec_max_len")
    assert max_len.value == BERT4RecConfig().max_len and max_len.help == "Most recent items of a history the model reads."
    lr = at.number_input(key="train_cfg_bert4rec_train_lr")  # the loop's settings, once, under Training
    assert lr.value == BERT4RecConfig().train.lr and "learning rate" in lr.help


def test_compare_page_ranks_runs_and_breaks_them_down(ws_root: Path) -> None:
    at = open_app("views/compare.py")
    assert "No evaluated runs" in _texts(at)
    ws = Workspace(ws_root)
    from recsys_core.data.demo import load_demo

    ds = load_demo()
    scores = {}
    for family in ("popularity", "ease"):
        scores[family] = run_experiment(ds, family, workspace=ws, dataset_name=DEMO_NAME).metrics["ndcg@10"]
    start = time.perf_counter()
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["model"].tolist() == sorted(scores, key=scores.get, reverse=True)
    assert table["NDCG@10"].tolist() == pytest.approx(sorted(scores.values(), reverse=True))
    # bar chart + two segment charts (history length, target popularity)
    assert len(at.get("plotly_chart")) == 3, time.perf_counter() - start


def test_a_cancelled_run_is_never_served_as_the_best_model(ws_root: Path) -> None:
    ws = Workspace(ws_root)
    ws.ensure_demo()
    ds = ws.load_dataset(DEMO_NAME)
    finished = run_experiment(ds, "popularity", workspace=ws, dataset_name=DEMO_NAME)
    cancelled = run_experiment(ds, "ease", workspace=ws, dataset_name=DEMO_NAME)
    ws.update_run(cancelled.run_id, status="cancelled", metrics={**cancelled.metrics, "ndcg@10": 0.99})
    at = open_app("views/recommend.py")
    assert not at.exception, at.exception
    assert f"run #{finished.run_id} (popularity, the best NDCG@10 on this dataset)" in _texts(at).replace("\\", "")
