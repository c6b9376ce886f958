"""Training jobs run in their own process and live in the workspace's `jobs` table: a finished job
records a loadable run; the cancel flag, set through another store (as another tab or server would),
stops a real SASRec+/BERT4Rec run within 2 s; two jobs with the same seed started together give exactly
what each gives alone; a job whose process was killed is marked interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import build_dataset
from recsys_core.models.base import load_model
from recsys_core.training.jobs import TrainingJob
from recsys_core.training.worker import Reporter, trained_models
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

SMALL = {"hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16}
ENDLESS = {**SMALL, "epochs": 10_000, "patience": 10_000}
START_S = 120  # a child imports torch before its first step: generous on a busy 2-core box


def _sequences(n_users: int = 80, n_items: int = 30, length: int = 12):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(u, (start + t) % n_items, t) for t in range(length)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="cycle")


@pytest.fixture
def store(tmp_path) -> JobStore:
    ws = Workspace(tmp_path / "ws")
    ws.save_dataset(_sequences(), "cycle")
    return JobStore(ws)


def _wait_for(predicate, timeout_s: float = START_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_runs_in_another_process_and_records_a_loadable_run(store):
    job = TrainingJob.start(store, "cycle", "ease", {"l2": 10.0})
    assert job.process.pid != os.getpid()
    assert job.join(START_S)
    record = job.record()
    assert record.status == "finished", record.error
    run = store.workspace.get_run(record.run_id)
    assert run.status == "finished" and run.metrics["ndcg@10"] == record.result["metrics"]["ndcg@10"]
    assert load_model(run.artifact_dir).score([np.array([0, 1])]).shape == (1, 30)
    assert record.pid is None and job.process.returncode == 0


@pytest.mark.parametrize("family", ["sasrec", "bert4rec"])
def test_the_cancel_flag_from_another_store_stops_a_real_run_within_2_s(store, family):
    job = TrainingJob.start(store, "cycle", family, ENDLESS)
    other_tab = JobStore(Workspace(store.workspace.root))  # a second server process would open its own
    _wait_for(lambda: other_tab.get(job.id).curve.get("val"))  # one validation: a best checkpoint exists
    running = other_tab.get(job.id)
    assert running.status == "running" and 0 < running.step < running.total
    assert running.eta_s is not None and running.curve["loss"]
    asked = time.monotonic()
    assert other_tab.request_cancel(job.id)
    _wait_for(lambda: not other_tab.get(job.id).active, timeout_s=10)
    latency = time.monotonic() - asked
    job.process.wait(10)
    assert latency < 2.0, f"cancel took {latency:.2f} s"
    record = other_tab.get(job.id)
    assert record.status == "cancelled" and record.result["status"] == "cancelled"
    run = store.workspace.get_run(record.run_id)
    assert run.status == "cancelled"
    assert np.isfinite(load_model(run.artifact_dir).score([np.array([3, 4, 5])]).numpy()).all()


def test_two_jobs_with_one_seed_at_once_give_exactly_what_one_gives_alone(store, monkeypatch):
    monkeypatch.setenv("RECSYS_MAX_JOBS", "2")  # the operator allows two at once (a 2-core machine's cap is one)
    store.workspace.save_dataset(_sequences(n_users=240), "cycle240")  # a few seconds of training per job
    settings = {**SMALL, "epochs": 20, "patience": 100, "seed": 7}  # one thread a job: long enough to overlap
    alone = TrainingJob.start(store, "cycle240", "sasrec", settings)
    assert alone.join(START_S) and alone.state == "finished", alone.error
    together = [TrainingJob.start(store, "cycle240", "sasrec", settings) for _ in range(2)]
    overlapped = False
    while any(job.running for job in together):
        rows = [job.record() for job in together]
        overlapped |= all(r.status == "running" and r.step > 0 for r in rows)
        time.sleep(0.05)
    assert overlapped, "the two jobs never trained at the same time"
    for job in together:
        assert job.state == "finished", job.error
    expected = alone.result["metrics"]
    assert [j.result["metrics"] for j in together] == [expected, expected]
    assert expected["ndcg@10"] > 0


def test_a_job_whose_process_was_killed_is_marked_interrupted(store):
    job = TrainingJob.start(store, "cycle", "sasrec", ENDLESS)
    _wait_for(lambda: store.get(job.id).step > 0)
    os.kill(job.process.pid, signal.SIGKILL)
    _wait_for(lambda: not store.get(job.id).active, timeout_s=10)
    record = store.get(job.id)
    assert record.status == "interrupted" and "SIGKILL" in record.error


def test_a_running_row_whose_process_is_gone_is_marked_interrupted_when_listed(store):
    """The launching server died too, so nobody reaped the child: the next listing notices."""
    job_id = store.create("cycle", "sasrec", ENDLESS)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    store.mark_running(job_id, int(gone.stdout))
    assert [j.id for j in store.list(dataset="cycle", active_only=True)] == []
    record = store.get(job_id)
    assert record.status == "interrupted" and "start it again" in record.error


def test_a_bad_setting_fails_with_a_message(store):
    job = TrainingJob.start(store, "cycle", "ease", {"no_such_setting": 1})
    assert job.join(START_S)
    assert job.state == "failed" and "no_such_setting" in job.error
    assert store.request_cancel(job.id) is False  # an ended job has nothing to cancel


class _FakeStore:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def report(self, job_id: int, **fields) -> None:
        self.rows.append(fields)

    def cancel_requested(self, job_id: int) -> bool:
        return False


def test_the_eta_is_measured_from_the_step_rate_and_capped_by_the_cpu_budget():
    store = _FakeStore()
    reporter = Reporter(store, 1)
    progress = reporter.progress
    progress.update(10, 1000, epoch=1, loss=5.0)
    time.sleep(0.1)
    progress.update(20, 1000, epoch=1, loss=4.0)
    reporter.flush()
    row = store.rows[-1]
    assert row["fraction"] == 0.02 and row["loss"] == 4.0 and row["curve"]["loss"] == [[10, 5.0, 1], [20, 4.0, 1]]
    assert 5 < row["eta_s"] < 60 and not row["eta_bounded"]  # ~0.01 s a step, 980 steps left
    budgeted = Reporter(_FakeStore(), 2, cpu_budget_s=0.001)
    budgeted.progress.update(10, 1000)
    sum(range(300_000))  # spend more than the 1 ms of CPU budget
    budgeted.progress.update(20, 1000)
    budgeted.flush()
    assert budgeted.store.rows[-1]["eta_s"] == 0.0 and budgeted.store.rows[-1]["eta_bounded"] == 1


def test_the_eta_counts_the_models_still_to_train_one_after_another():
    """Three members (or a blend's three): the time left is this model's steps left plus two more models' steps, at
    this model's rate; the next model's loop, its step count starting again, is measured from its own first step."""
    store = _FakeStore()
    reporter = Reporter(store, 1, models=3)
    reporter.progress.update(0, 100)
    time.sleep(0.3)
    reporter.progress.update(50, 100, loss=4.0)
    reporter.flush()
    first = store.rows[-1]["eta_s"]  # 50 steps left + 2 x 100, at ~6 ms a step
    assert 1.0 < first < 10.0
    reporter.progress.update(100, 100, loss=3.0)
    time.sleep(0.5)  # the next model starts later: its rate is its own, not the time since the first model's start
    reporter.progress.update(0, 100, message="training member 2 of 3")
    time.sleep(0.3)
    reporter.progress.update(50, 100, loss=4.0)
    reporter.flush()
    second = store.rows[-1]["eta_s"]  # 50 + 1 x 100 steps at ~6 ms
    assert 0.5 < second < first
    assert [point[2] for point in store.rows[-1]["curve"]["loss"]] == [1, 1, 2]  # the page draws a line per model
    one = Reporter(_FakeStore(), 2)
    one.progress.update(0, 100)
    time.sleep(0.3)
    one.progress.update(50, 100)
    one.flush()
    assert one.store.rows[-1]["eta_s"] < first / 2  # one model: only its own 50 steps
    # the loops a job's Reporter expects: members, a blend's parts' members, and a refit's second loop per member
    assert trained_models("bert4rec", {"members": 2}) == 2 and trained_models("bert4rec", {"refit": True}) == 2
    assert trained_models("blend", {}) == 6 and trained_models("bert4rec", {"no_such_setting": 1}) == 1
