"""Long in-server work recorded in the workspace (`background.WorkspaceJob` over `workspace.jobs.JobStore`):
progress and the result are readable from another store (another tab or server), the cancel flag stops the
work within 2 s, the result is stored as files under the workspace (no pickle), a job whose server died is
marked interrupted, and a workspace.db made before the `owner` column gets it on open."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from recsys_core.background import WorkspaceJob
from recsys_core.errors import DataError
from recsys_core.workspace.jobs import JobStore, process_alive
from recsys_core.workspace.registry import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def _wait_for(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_progress_and_result_are_visible_from_another_store_and_stored_as_files(ws):
    gate = threading.Event()

    def work(progress):
        progress.update(1, 4, message="mapped 1 of 4 batches")
        gate.wait(10)
        for step in (2, 3, 4):
            progress.update(step, 4, message=f"mapped {step} of 4 batches")
        return {"coords": np.arange(6, dtype=np.float32).reshape(3, 2),
                "table": pd.DataFrame({"label": ["a", "b"], "value": [0.5, -1.0]}), "note": "pca", "n": 3}

    job = WorkspaceJob.start(JobStore(ws), "umap", "demo", work, params={"dims": 2}, owner="tab-1", title="UMAP")
    other = JobStore(ws)  # as another tab (or another server on this workspace) opens it
    _wait_for(lambda: other.get(job.id).message == "mapped 1 of 4 batches")
    row = other.get(job.id)
    assert row.status == "running" and row.fraction == pytest.approx(0.25) and row.owner == "tab-1"
    assert [j.id for j in other.list(active_only=True, kind=None)] == [job.id]
    assert other.list(active_only=True) == []  # the Train page's default listing shows training jobs only
    gate.set()
    assert job.join(10)
    row = other.get(job.id)
    assert row.status == "finished" and row.fraction == 1.0 and row.params == {"dims": 2}
    result = other.load_result(job.id)
    np.testing.assert_array_equal(result["coords"], np.arange(6, dtype=np.float32).reshape(3, 2))
    pd.testing.assert_frame_equal(result["table"], pd.DataFrame({"label": ["a", "b"], "value": [0.5, -1.0]}))
    assert (result["note"], result["n"]) == ("pca", 3)
    files = sorted(p.name for p in other.result_dir(job.id).iterdir())
    assert files == ["coords.npy", "table.parquet"]
    assert other.latest("umap", "demo", {"dims": 2}).id == job.id  # what a reload reattaches to
    assert other.latest("umap", "demo", {"dims": 3}) is None


def test_cancel_from_another_store_stops_the_work_within_2_s(ws):
    def work(progress):
        for step in range(100_000):
            if progress.cancelled:
                return None
            progress.update(step, 100_000, message=f"{step} of 100000 users")
            time.sleep(0.01)
        return {}

    job = WorkspaceJob.start(JobStore(ws), "global_view", "demo", work)
    other = JobStore(ws)
    _wait_for(lambda: other.get(job.id).step > 0)
    asked = time.monotonic()
    assert other.request_cancel(job.id)
    _wait_for(lambda: not other.get(job.id).active, timeout_s=5)
    assert time.monotonic() - asked < 2.0
    row = other.get(job.id)
    assert row.status == "cancelled" and not other.result_dir(job.id).exists()


def test_a_failing_job_is_recorded_failed_with_its_message(ws):
    def work(progress):
        raise DataError("no embeddings in this model", hint="train one with embeddings")

    job = WorkspaceJob.start(JobStore(ws), "umap", "demo", work)
    assert job.join(10)
    row = job.record()
    assert row.status == "failed" and "no embeddings in this model" in row.error


def test_a_thread_job_whose_server_died_is_marked_interrupted(ws):
    store = JobStore(ws)
    job_id = store.create("demo", kind="umap", runner="thread")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    store.mark_running(job_id, int(dead.stdout))  # the server that ran the thread is gone
    assert JobStore(ws).list(active_only=True, kind=None) == []  # a new server starting up sweeps it
    assert store.get(job_id).status == "interrupted"


def test_a_thread_job_naming_this_process_but_run_by_no_thread_is_interrupted(ws):
    """A restarted container often gets the same pid back: the pid alone would keep the row 'running' forever."""
    store = JobStore(ws)
    job_id = store.create("demo", kind="umap", runner="thread")
    store.mark_running(job_id, os.getpid())
    assert store.list(active_only=True, kind=None) == []
    assert store.get(job_id).status == "interrupted"


def test_liveness_knows_live_dead_zombie_and_impossible_pids():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)  # exited, not yet reaped: a zombie
    try:
        assert process_alive(os.getpid()) and process_alive(1)  # pid 1: alive even when owned by root
        assert not process_alive(child.pid)
    finally:
        child.wait()
    assert not process_alive(child.pid)  # reaped: gone
    assert not any(process_alive(pid) for pid in (None, 0, -1, 2**31, 2**40))  # kill(-1, 0) would say yes


OLD_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL DEFAULT 'train', dataset TEXT NOT NULL,
    family TEXT NOT NULL, overrides TEXT NOT NULL DEFAULT '{}', split TEXT NOT NULL DEFAULT 'leave_one_out',
    status TEXT NOT NULL DEFAULT 'pending', fraction REAL NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0, loss REAL,
    metrics TEXT NOT NULL DEFAULT '{}', curve TEXT NOT NULL DEFAULT '{}', message TEXT NOT NULL DEFAULT '',
    eta_s REAL, eta_bounded INTEGER NOT NULL DEFAULT 0, elapsed_s REAL NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL DEFAULT '', pid INTEGER, error TEXT NOT NULL DEFAULT '',
    run_id INTEGER, result TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
INSERT INTO jobs (dataset, family, status, created_at, updated_at)
    VALUES ('demo', 'ease', 'finished', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00');
"""


def test_an_old_workspace_db_gets_the_owner_column_and_keeps_its_jobs(ws):
    with sqlite3.connect(ws.db_path) as conn:
        conn.executescript("DROP TABLE IF EXISTS jobs;" + OLD_SCHEMA)
    store = JobStore(ws)
    with sqlite3.connect(ws.db_path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert {"owner", "runner", "title"} <= columns
    old = store.get(1)
    assert (old.family, old.status, old.owner, old.runner) == ("ease", "finished", "", "process")
    new = store.create("demo", kind="umap", owner="tab-9", runner="thread")
    assert [j.id for j in store.list(kind=None, owner="tab-9")] == [new]
    JobStore(ws)  # opening it again (another server) migrates nothing twice
