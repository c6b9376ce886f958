"""The Train page with AppTest: a training job beyond the cap is shown queued with its place in line, in the
Train page's job list and in every page's jobs panel, and Cancel ends it at once; the load-folder form says
where it loaded from relative to the workspace, and its errors never name the server's folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    monkeypatch.setenv("RECSYS_MAX_JOBS", "1")
    return root


def _texts(at) -> str:
    shown = [str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.error]]
    return "\n".join(shown + [bar.proto.text for bar in at.get("progress")])  # a progress bar's words


def test_a_job_beyond_the_cap_is_shown_queued_and_cancelled_at_once(ws_root: Path) -> None:
    at = open_app("views/train.py")  # saves the demo dataset into the workspace
    store = JobStore(Workspace(ws_root))
    running = store.create(DEMO_NAME, "ease", {"l2": 1.0})
    store.mark_running(running, os.getpid())  # a live process holds the one slot
    waiting = store.create(DEMO_NAME, "ease", {"l2": 2.0}, queued=True)
    try:
        at.run()
        assert not at.exception, at.exception
        text = _texts(at)
        assert "queued: next in line; it starts when a running job ends (at most 1 train at once" in text
        assert "1 running, 1 queued in this workspace; it waits in the queue until a slot frees" in \
            " ".join(e.label for e in at.expander)
        at.button(key=f"train_cancel_{waiting}").click().run()
        assert store.get(waiting).status == "cancelled" and store.get(waiting).pid is None
        assert f"Job #{waiting} was cancelled before it started; nothing was trained." in _texts(at)
    finally:
        store.finish(running, "cancelled")


def test_the_recommend_pages_panel_lists_the_queue(ws_root: Path) -> None:
    ws = Workspace(ws_root)  # a finished run, so the page starts no automatic baseline job of its own
    ws.ensure_demo()
    run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)
    at = open_app("views/recommend.py")
    store = JobStore(Workspace(ws_root))
    running = store.create(DEMO_NAME, "ease", title="train ease")
    store.mark_running(running, os.getpid())
    store.create(DEMO_NAME, "sasrec", queued=True, title="train sasrec")
    try:
        at.run()
        panel = next(e for e in at.expander if e.label.startswith("Jobs running in this workspace"))
        assert panel.label == "Jobs running in this workspace (1), 1 queued"
        assert any("train sasrec" in m.value and "queued, next in line" in m.value for m in panel.markdown)
    finally:
        store.finish(running, "cancelled")


def test_the_load_folder_form_names_paths_relative_to_the_workspace(ws_root: Path) -> None:
    at = open_app("views/train.py")
    EASE(EASEConfig(l2=50.0)).fit(load_demo()).save(ws_root / "models" / "mine")
    at.text_input(key="train_model_path").set_value("models/mine").run()
    at.button(key="train_load_path").click().run()
    assert "Loaded a ease model from models/mine." in _texts(at)
    for typed in ("/etc", "models/" + "y" * 300, "models/missing"):
        at.text_input(key="train_model_path").set_value(typed).run()
        at.button(key="train_load_path").click().run()
        errors = " ".join(str(e.value) for e in at.error)
        assert "Could not load this model" in errors and str(ws_root) not in errors, errors
    assert not at.exception, at.exception
