"""Long work on a daemon thread, so a page can poll its progress and other sessions stay responsive.

torch and numpy release the GIL inside their kernels, so a worker thread leaves the web server free
to serve other browser sessions. Cancelling is cooperative: the work checks the flag on `Progress`.
`WorkspaceJob` records such work in the workspace's job store (progress, cancel flag, result), so it
belongs to the workspace rather than to the browser tab that started it.
"""

from __future__ import annotations

import atexit
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from recsys_core.errors import RecsysError
from recsys_core.progress import Progress, ProgressEvent

# Jobs whose thread may still run. At exit each is cancelled and given a moment to stop: a daemon thread
# caught inside a torch kernel while the interpreter tears down aborts the process ("terminate called without
# an active exception", exit status 134) after all the work has succeeded.
_LIVE: weakref.WeakSet[BackgroundJob] = weakref.WeakSet()
EXIT_WAIT_S = 120.0


@atexit.register
def _stop_live_jobs() -> None:
    jobs = [job for job in list(_LIVE) if job.running]
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + EXIT_WAIT_S
    for job in jobs:
        job.join(max(0.0, deadline - time.monotonic()))


class BackgroundJob:
    """Runs `work()` once on its own thread. States: pending, running, finished, cancelled, failed.

    Subclasses implement `work()`, returning (result, final state). A `RecsysError` fails the job with its
    message; any other exception fails it with the message and the traceback in `details`, so a page can
    show what happened instead of losing the thread silently.
    """

    def __init__(self, name: str) -> None:
        self.progress = Progress()
        self.state = "pending"
        self.result: Any = None
        self.error: str | None = None
        self.details: str | None = None
        self.started = time.perf_counter()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def work(self) -> tuple[Any, str]:
        raise NotImplementedError

    def release(self) -> None:
        """Called when the work ends, however it ends: drop big inputs the job no longer needs."""

    def start(self):
        self.state, self.started = "running", time.perf_counter()
        _LIVE.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result, self.state = self.work()
        except RecsysError as err:
            self.error, self.state = str(err), "failed"
        except Exception as err:  # noqa: BLE001  a page must show a message, never lose the thread silently
            self.error, self.details, self.state = f"{type(err).__name__}: {err}", traceback.format_exc(), "failed"
        finally:
            self.ended = time.perf_counter()
            self.release()

    def cancel(self) -> None:
        self.progress.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started


# ---- long work recorded in the workspace ---------------------------------------------------------

POLL_S = 0.2  # how often the cancel flag is read: work that checks `progress.cancelled` stops within 2 s
WRITE_S = 0.5  # at most two progress writes a second, whatever the step rate
TICK_S = 2.0  # the elapsed time is written this often even when the work reports nothing
Work = Callable[[Progress], "dict[str, Any] | None"]


class WorkspaceJob:
    """Long in-server work (a map, a global explanation, an export, a blurb batch) recorded in the
    workspace's job store, so every tab sees it, can cancel it, and finds its result after a reload.

    `work(progress)` runs on a thread of this process. It reports through `progress.update(step, total,
    message=...)` (the message in human units: "explained 40 of 100 users"), checks `progress.cancelled`
    between steps, and returns a dict of named results: NumPy arrays, pandas tables and JSON values,
    stored under the workspace by `store.save_result` (no pickle). The row, not this handle, is the truth.

    The store is passed in (a `recsys_core.workspace.jobs.JobStore`): this module sits below the workspace.
    """

    def __init__(self, store: Any, job_id: int, thread: threading.Thread | None = None) -> None:
        self.store, self.id, self._thread = store, job_id, thread

    @classmethod
    def start(cls, store: Any, kind: str, dataset: str, work: Work, *, params: dict | None = None,
              owner: str = "", title: str = "") -> WorkspaceJob:
        """Record a job and start `work` on a daemon thread; returns at once."""
        job_id = store.create(dataset, kind=kind, params=dict(params or {}), owner=owner, runner="thread",
                              title=title)
        store.claim(job_id)
        thread = threading.Thread(target=_run, args=(store, job_id, work), name=f"{kind}-job-{job_id}", daemon=True)
        thread.start()
        return cls(store, job_id, thread)

    def record(self) -> Any:
        return self.store.get(self.id)

    @property
    def running(self) -> bool:
        return self.record().active

    def cancel(self) -> bool:
        return self.store.request_cancel(self.id)

    def result(self) -> dict[str, Any]:
        return self.store.load_result(self.id)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (as recorded); True if it did within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class JobReporter:
    """Writes the latest progress event to the job's row (throttled) and turns the row's cancel flag into
    `progress.cancel()`, on its own thread, so the work never waits on SQLite. The one reporter of every
    job: a training job's (`training.worker.Reporter`) adds loss curves and a budget-bounded ETA."""

    def __init__(self, store: Any, job_id: int) -> None:
        self.store, self.job_id = store, job_id
        self.progress = Progress(callback=self._on_event)
        self._lock = threading.Lock()
        self._first: ProgressEvent | None = None
        self._latest: ProgressEvent | None = None
        self._dirty = False
        self._wall0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"job-{job_id}-reporter", daemon=True)

    def start(self) -> JobReporter:
        self._thread.start()
        return self

    def _on_event(self, event: ProgressEvent) -> None:
        with self._lock:
            self._first = self._first or event
            self._latest, self._dirty = event, True

    def _watch(self) -> None:
        last_write = last_tick = 0.0
        while not self._stop.wait(POLL_S):
            if not self.progress.cancelled and self._cancel_requested():
                self.progress.cancel()
                self.store.report(self.job_id, message="cancelling: stopping after this step")
            if time.perf_counter() - last_write >= WRITE_S:
                self.flush()
                last_write = time.perf_counter()
            if time.perf_counter() - last_tick >= TICK_S:  # "running for 40 s" even between progress events
                self.store.report(self.job_id, elapsed_s=round(time.perf_counter() - self._wall0, 1))
                last_tick = time.perf_counter()

    def _cancel_requested(self) -> bool:
        try:
            return bool(self.store.cancel_requested(self.job_id))
        except Exception:  # noqa: BLE001  the workspace is gone (deleted, unmounted): no tab can see this job
            return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty or self._latest is None:
                return
            fields = self._fields(self._latest)
            self._dirty = False
        self.store.report(self.job_id, **fields)

    def _fields(self, event: ProgressEvent) -> dict:
        return {"step": event.step, "total": event.total, "fraction": event.fraction, "message": event.message,
                "eta_s": _eta(self._first, event), "elapsed_s": round(time.perf_counter() - self._wall0, 2)}


def _eta(first: ProgressEvent | None, event: ProgressEvent) -> float | None:
    """Seconds left at the rate since the first event (so set-up before it does not count)."""
    if first is None or not event.total or event.step <= first.step:
        return event.eta_s
    rate = (event.elapsed_s - first.elapsed_s) / (event.step - first.step)
    return round(rate * max(event.total - event.step, 0), 1)


def _run(store: Any, job_id: int, work: Work) -> None:
    reporter = JobReporter(store, job_id).start()
    status, result, error = "failed", {}, ""
    try:
        out = work(reporter.progress)
        if reporter.progress.cancelled:
            status = "cancelled"
        else:
            reporter.stop()
            result, status = store.save_result(job_id, out or {}), "finished"
    except RecsysError as err:
        error = str(err)
    except Exception as err:  # noqa: BLE001  a tab must show why, not a row left running
        error = f"{type(err).__name__}: {err}"
        with open(store.log_path(job_id), "a") as log:
            log.write(traceback.format_exc())
    finally:
        reporter.stop()
        message = {"cancelled": "cancelled", "finished": None}.get(status, "failed")
        store.finish(job_id, status, result=result, error=error, message=message)
