"""The model pages on a fresh workspace: the popularity ranking serves at once and says so, the automatic EASE
baseline trains as a workspace job (named by its id), and the page serves its run once it finished; a cancelled
baseline is not restarted by a rerun, only by the button."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401  (autouse fixture)

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.training.baseline import BASELINE_KIND
from recsys_core.training.jobs import TrainingJob
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace
from tests.test_jobs import START_S

PAGE = "views/recommend.py"
TIMEOUT_S = 180


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


def _caption(at) -> str:
    """The page's "model: ..." caption as read (its Markdown escapes removed)."""
    return next(str(c.value) for c in at.caption if "model:" in str(c.value)).replace("\\", "")


def _baseline_jobs(root: Path) -> list:
    return JobStore(Workspace(root)).list(dataset=DEMO_NAME, kind=BASELINE_KIND)


def _top_items(at) -> list[str]:
    return at.container(key="rec_topk").dataframe[0].value["item_id"].astype(str).tolist()


def test_a_fresh_workspace_serves_popularity_while_the_baseline_job_trains_then_its_run(ws_root: Path) -> None:
    at = open_app(PAGE, timeout_s=TIMEOUT_S)
    (job,) = _baseline_jobs(ws_root)
    caption = _caption(at)
    assert "popularity ranking" in caption and f"EASE baseline (job #{job.id})" in caption, caption
    assert "switches to it when it finishes" in caption
    assert job.family == "ease" and job.title == "Automatic baseline: EASE"
    catalogue = catalogue_of(load_demo())  # what is served is the popularity order, as the caption says
    counts = [int(catalogue.popularity[catalogue.index[item]]) for item in _top_items(at)]
    assert counts and counts == sorted(counts, reverse=True), counts

    assert TrainingJob(JobStore(Workspace(ws_root)), job.id).join(START_S)
    run_id = JobStore(Workspace(ws_root)).get(job.id).run_id
    at.run(timeout=TIMEOUT_S)  # the job card's refresh reruns the page once the job ended
    assert not at.exception, at.exception
    caption = _caption(at)
    assert f"run #{run_id} (ease, the best NDCG@10" in caption and "popularity" not in caption, caption
    assert len(_baseline_jobs(ws_root)) == 1  # reruns, and a second tab, start nothing more
    assert f"run #{run_id} (ease" in _caption(open_app(PAGE, timeout_s=TIMEOUT_S))


def test_a_cancelled_baseline_stays_cancelled_until_the_button_starts_it_again(
        ws_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_MAX_JOBS", "1")
    ws = Workspace(ws_root)
    ws.ensure_demo()
    store = JobStore(ws)
    busy = store.create(DEMO_NAME, "popularity", queued=True)
    assert store.claim_queued(1) == [busy]  # the one slot is taken: the baseline waits in line, no process starts
    at = open_app(PAGE, timeout_s=TIMEOUT_S)
    (job,) = _baseline_jobs(ws_root)
    assert f"(job #{job.id}) is queued, next in line" in _caption(at)
    assert store.request_cancel(job.id)
    for _ in range(2):
        at.run(timeout=TIMEOUT_S)
        assert not at.exception, at.exception
        assert [j.id for j in _baseline_jobs(ws_root)] == [job.id]  # not restarted by a rerun
    assert "cancelled and is not restarted by itself" in _caption(at)
    note = at.container(key="baseline_ended")
    assert f"(job #{job.id}) cancelled" in note.info[0].value
    assert len(_top_items(at)) > 0  # the page still serves the popularity ranking
    note.button(key="baseline_again").click().run(timeout=TIMEOUT_S)
    again = _baseline_jobs(ws_root)[0]
    assert again.id != job.id and again.status == "queued" and f"(job #{again.id}) is queued" in _caption(at)
    store.request_cancel(again.id)
    store.finish(busy, "cancelled")
    assert np.all([not j.active for j in store.list(kind=None)])


def test_the_embeddings_page_says_why_there_is_no_map_while_the_baseline_trains(ws_root: Path) -> None:
    # Popularity has one number per item: the page used to show "these embeddings have 1 dimension(s)" here.
    at = open_app("views/embeddings.py", timeout_s=TIMEOUT_S)
    assert not at.exception, at.exception
    (job,) = _baseline_jobs(ws_root)
    info = " ".join(str(i.value) for i in at.info).replace("\\", "")
    assert "A map needs a model whose item vectors mean something" in info, info
    assert f"EASE baseline (job #{job.id})" in info and "switches to it when it finishes" in info, info
    assert not at.error, [e.value for e in at.error]
    TrainingJob(JobStore(Workspace(ws_root)), job.id).cancel()


def test_the_train_page_lists_the_automatic_baseline_with_the_other_training_jobs(ws_root: Path) -> None:
    open_app(PAGE, timeout_s=TIMEOUT_S)  # a model page starts the baseline
    (job,) = _baseline_jobs(ws_root)
    at = open_app("views/train.py", timeout_s=TIMEOUT_S)
    assert not at.exception, at.exception
    card = at.container(key=f"train_job_card_{job.id}")
    assert f"Job #{job.id}: Automatic baseline: EASE" in " ".join(str(m.value) for m in card.markdown).replace("\\", "")
    TrainingJob(JobStore(Workspace(ws_root)), job.id).cancel()
