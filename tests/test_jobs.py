"""Background training: a run finishes and is recorded; cancel stops a long run within seconds,
keeps a usable model and records the run as cancelled."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from recsys_core.data.dataset import build_dataset
from recsys_core.models.base import load_model
from recsys_core.training.jobs import TrainingJob
from recsys_core.workspace.registry import Workspace


def _sequences(n_users: int = 80, n_items: int = 30, length: int = 12):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(u, (start + t) % n_items, t) for t in range(length)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="cycle")


def test_finished_job_is_recorded_with_a_loadable_artifact(tmp_path):
    ws = Workspace(tmp_path / "ws")
    job = TrainingJob(_sequences(), "ease", {"l2": 10.0}, workspace=ws, dataset_name="cycle").start()
    job.join(60)
    assert job.state == "finished", job.error
    run = ws.get_run(job.result.run_id)
    assert run.status == "finished" and run.metrics["ndcg@10"] == job.result.metrics["ndcg@10"]
    model = load_model(run.artifact_dir)
    assert model.score([np.array([0, 1])]).shape == (1, 30)


def test_cancel_stops_a_long_run_quickly_and_keeps_the_best_model(tmp_path):
    ws = Workspace(tmp_path / "ws")
    overrides = {"epochs": 10_000, "patience": 10_000, "hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16}
    job = TrainingJob(_sequences(), "sasrec", overrides, workspace=ws, dataset_name="cycle").start()
    deadline = time.monotonic() + 60
    while not any("ndcg@10" in e.metrics for e in job.progress.snapshot()) and time.monotonic() < deadline:
        time.sleep(0.1)  # wait for one validation, so a best checkpoint exists
    assert job.running
    cancelled_at = time.monotonic()
    job.cancel()
    job.join(30)
    assert not job.running and time.monotonic() - cancelled_at < 15
    assert job.state == "cancelled", job.error
    run = ws.get_run(job.result.run_id)
    assert run.status == "cancelled"
    scores = load_model(run.artifact_dir).score([np.array([3, 4, 5])])
    assert np.isfinite(scores.numpy()).all()


def test_a_bad_setting_fails_with_a_message_not_a_dead_thread(tmp_path):
    job = TrainingJob(_sequences(), "ease", {"no_such_setting": 1}, workspace=Workspace(tmp_path / "ws")).start()
    job.join(30)
    assert job.state == "failed" and "no_such_setting" in job.error
