"""Training jobs: one child process per run (`training.worker`), recorded in the workspace's job store, at most
`max_jobs()` at once on a machine; the rest wait in the store as `queued` and start in order as slots free.

`TrainingJob.start` records the job as queued and asks `dispatch` to start what the cap allows; it returns at
once. The row, not the handle, is the truth, so any tab (or another server on the same workspace) sees the job,
its place in the queue, and can cancel it through `store.request_cancel`. Whoever notices a free slot first
starts the next job: the server whose child just ended (its reaper), or any server's queue watcher
(`watch_queue`, every `DISPATCH_S`); `store.claim_queued` takes the slot in one write transaction, so two of
them never start the same job or pass the cap.

Processes: the server that starts a worker waits for it (a reaper thread), so no worker is left a zombie while
the server runs. A worker dies with that server: it watches its parent's pid and, once the server is gone
(killed, restarted), stops after its current step, keeps the best weights as a cancelled run, records the job
`interrupted` and exits, so no job runs on unsupervised. (Who then reaps it is the machine's init; run the server
under one that reaps orphans: systemd, `docker run --init`, tini.) Jobs outlive the browser tab, not the server.

The store is passed in (a `recsys_core.workspace.jobs.JobStore`): the workspace is a layer above (README, Layers).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from recsys_core.threads import cores, training_threads

WORKER = "recsys_core.training.worker"
MAX_JOBS_ENV = "RECSYS_MAX_JOBS"
DISPATCH_S = 2.0  # how often a server's queue watcher looks for a free slot
_POLL_S = 0.1
_LAUNCHED: dict[tuple[str, int], subprocess.Popen] = {}  # (db path, job id) -> the worker this process started
_WATCHED: set[str] = set()  # db paths this process runs a queue watcher for
_LOCK = threading.Lock()


def max_jobs() -> int:
    """How many training jobs may run at once on this machine: `RECSYS_MAX_JOBS`, or else half its cores shared
    among each job's threads (at least one), so the web server keeps cores for the pages."""
    raw = os.environ.get(MAX_JOBS_ENV, "").strip()
    try:
        if raw and int(raw) >= 1:
            return int(raw)
    except ValueError:
        pass  # a typo in the operator's setting must not stop the server: the machine's default
    return max(1, cores() // (2 * training_threads()))


class TrainingJob:
    """Handle on one training job: its state comes from the job store, so it is the same from any tab."""

    def __init__(self, store: Any, job_id: int) -> None:
        self.store, self.id = store, job_id

    @classmethod
    def start(cls, store: Any, dataset: str, family: str, overrides: dict[str, Any] | None = None, *,
              split_kind: str = "leave_one_out", kind: str = "train", params: dict | None = None,
              title: str = "") -> TrainingJob:
        """Record a job on the saved dataset `dataset`, queued, and start it if a slot is free; returns at once.
        Every job of its own process (`kind` 'train', the automatic 'baseline', or a search's 'tune' with its
        `params`) shares the cap; `title` is what the jobs panels show."""
        job_id = store.create(dataset, family, dict(overrides or {}), split_kind, kind=kind, params=params,
                              title=title, queued=True)
        dispatch(store)
        watch_queue(store)  # should this server's child not be the one to free a slot
        return cls(store, job_id)

    @property
    def process(self) -> subprocess.Popen | None:
        """The worker, when this process started it (None while queued, or when another server did)."""
        with _LOCK:
            return _LAUNCHED.get((str(self.store.db_path), self.id))

    def record(self) -> Any:
        return self.store.get(self.id)

    @property
    def state(self) -> str:
        return self.record().status

    @property
    def error(self) -> str:
        return self.record().error

    @property
    def running(self) -> bool:
        """Queued or running: not ended yet."""
        return self.record().active

    @property
    def result(self) -> dict:
        """The recorded run's summary (`RunResult.summary()`), empty until the run is recorded."""
        return self.record().result

    def cancel(self) -> bool:
        return self.store.request_cancel(self.id)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (as recorded); True if it did within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        if self.process is not None:  # the row is final; let the process exit too
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return True


def dispatch(store: Any) -> list[int]:
    """Start the queued jobs the cap leaves room for, oldest first; their ids."""
    started = store.claim_queued(max_jobs())
    for job_id in started:
        _launch(store, job_id)
    return started


def watch_queue(store: Any) -> None:
    """Once per process and workspace: a daemon thread that dispatches every `DISPATCH_S`, so a queued job starts
    when a slot frees even if the job that freed it belonged to a server that is gone. It ends with the workspace."""
    key = str(store.db_path)
    with _LOCK:
        if key in _WATCHED:
            return
        _WATCHED.add(key)
    threading.Thread(target=_watch, args=(store,), name="training-queue", daemon=True).start()


def _watch(store: Any) -> None:
    try:
        while store.db_path.is_file():
            _dispatch_quietly(store)
            time.sleep(DISPATCH_S)
    finally:
        with _LOCK:
            _WATCHED.discard(str(store.db_path))


def _dispatch_quietly(store: Any) -> None:
    try:
        dispatch(store)
    except (sqlite3.Error, OSError):  # the workspace is busy or was removed: the next look tries again
        pass


def _launch(store: Any, job_id: int) -> None:
    """Start the process of a job `claim_queued` made pending, and a thread that waits for it."""
    try:
        with open(store.log_path(job_id), "ab") as log:
            # The child opens the same workspace by its path: nothing but a path and an id crosses over, plus this
            # process's pid, which the child watches to stop when this server is gone.
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER, str(store.workspace.root), str(job_id), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    except OSError as err:  # out of processes or memory: say so on the job instead of leaving it pending
        store.end_if_active(job_id, "failed", f"the training process could not be started ({err.strerror or err}); "
                                              "start it again when the machine is less busy")
        return
    with _LOCK:
        _LAUNCHED[(str(store.db_path), job_id)] = process
    store.set_pid(job_id, process.pid)
    threading.Thread(target=_reap, args=(store, job_id, process), name=f"job-{job_id}-reaper", daemon=True).start()


def _reap(store: Any, job_id: int, process: subprocess.Popen) -> None:
    """Wait for the child (so it never lingers as a zombie); if it died without recording an end (killed,
    segfault), record one; then hand its slot to the next queued job."""
    code = process.wait()
    try:
        if code < 0:
            name = signal.Signals(-code).name
            store.end_if_active(job_id, "interrupted", f"the training process was stopped by {name} "
                                "(killed, or out of memory); start it again")
        elif code:
            store.end_if_active(job_id, "failed", f"the training process exited with code {code}; "
                                f"see jobs/{store.log_path(job_id).name} in the workspace")
    except (sqlite3.Error, OSError):
        return  # the workspace is gone: nothing to record, nothing to start
    _dispatch_quietly(store)
