"""The process a training job runs in: `python -m recsys_core.training.worker WORKSPACE JOB_ID [SERVER_PID]`
(see `training.jobs`).

Why a process of its own: torch seeds and draws dropout masks from one process-wide generator, so two
runs sharing a process change each other's results; a crash (segfault, OOM kill) here cannot take the
web server down; and the server's threads stay free for interactive work.

`run_job` takes the store as an argument and needs of it only `workspace` (load_dataset, record_run, ...)
and the job methods `mark_running`, `report`, `cancel_requested` and `finish`; only `main`, the entry point of
the process, opens the workspace it is given (the one exception to "training sits below the workspace",
named in tests/test_layout.py).

`run_experiment` stays the one code path: the run is recorded and saved exactly as from the CLI.

The job dies with the server that started it (`SERVER_PID`): a thread watches the parent's pid, and once it
changes (the server was killed; this process was handed to init) it cancels the run as a Cancel click would,
so the best weights so far are kept and recorded, and ends the job `interrupted`; after `ORPHAN_GRACE_S` more
it exits whatever it is doing. A pid, not `PR_SET_PDEATHSIG`: that signal follows the death of the *thread* that
started the child, and a reaper thread that starts the next queued job ends right after.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from recsys_core.background import JobReporter
from recsys_core.errors import RecsysError
from recsys_core.models.settings import flatten_config
from recsys_core.progress import ProgressEvent
from recsys_core.threads import training_threads, use_threads
from recsys_core.training.experiment import make_model, run_experiment
from recsys_core.training.tune import TUNE_KIND, run_tune_job
from recsys_core.workspace.visible import visible_text

MAX_LOSS_POINTS = 400  # the loss curve is thinned to this many points
NICENESS = 10
PARENT_POLL_S = 0.5  # how often the worker looks whether its server is still its parent
ORPHAN_GRACE_S = 60.0  # after the server is gone: time to keep and record the best weights, then exit
_SERVER_GONE = threading.Event()


class Reporter(JobReporter):
    """The job reporter of a training run: also keeps the loss and validation curves (thinned), counts the models a
    run trains one after another (`models`: a seed ensemble's members, a blend's parts' members) in its ETA, and
    bounds the ETA by what is left of the CPU budget."""

    def __init__(self, store: Any, job_id: int, cpu_budget_s: float = 0.0, models: int = 1) -> None:
        super().__init__(store, job_id)
        self.cpu_budget_s, self.models = cpu_budget_s, max(1, models)
        self._loops, self._step = 0, -1  # training loops started (a step count starting again: the next model's)
        self._total = 0
        self._loss: list[list[float]] = []
        self._val: list[list] = []
        self._metrics: dict = {}
        self._cpu0 = time.process_time()

    def _on_event(self, event: ProgressEvent) -> None:
        with self._lock:
            self._latest, self._dirty = event, True
            if event.total:  # the first event of each loop with steps: the step rate is measured from it
                if self._first is None or event.step < self._step:
                    self._first, self._loops = event, self._loops + 1
                self._total, self._step = event.total, event.step
            if event.loss is not None and not event.metrics:
                self._loss.append([event.step, round(event.loss, 5), max(1, self._loops)])  # and which model's
                if len(self._loss) > MAX_LOSS_POINTS:
                    self._loss = self._loss[::2]  # keep the shape, halve the points
            if event.metrics:
                self._metrics = {k: v for k, v in event.metrics.items() if isinstance(v, (int, float))}
                self._val.append([event.epoch, self._metrics, round(event.elapsed_s, 1), max(1, self._loops)])

    def _fields(self, event: ProgressEvent) -> dict:
        eta, bounded = self._eta(event)
        total = event.total or self._total
        return {"step": event.step, "total": total, "fraction": min(1.0, event.step / total) if total else 0.0,
                "epoch": event.epoch, "loss": self._loss[-1][1] if self._loss else None,
                "metrics": self._metrics, "message": event.message, "eta_s": eta, "eta_bounded": int(bounded),
                "elapsed_s": round(time.perf_counter() - self._wall0, 2),
                "curve": {"loss": list(self._loss), "val": list(self._val)}}

    def _eta(self, event: ProgressEvent) -> tuple[float | None, bool]:
        """Seconds left at the step rate since this loop's first step (start-up excluded), with the models still to
        train each as long as this one's steps at that rate, capped by what is left of the CPU budget at the CPU
        rate so far; (seconds, capped by the budget). A refit is a loop of its own, counted in `models`."""
        first, total = self._first, event.total or self._total
        eta = None
        if first is not None and total and event.step > first.step:
            rate = (event.elapsed_s - first.elapsed_s) / (event.step - first.step)
            eta = rate * (max(total - event.step, 0) + total * max(self.models - self._loops, 0))
        if not self.cpu_budget_s:
            return eta, False
        wall, cpu = time.perf_counter() - self._wall0, time.process_time() - self._cpu0
        cores = max(cpu / wall, 0.05) if wall > 0 else 1.0
        left = max(self.cpu_budget_s - cpu, 0.0) / cores
        return (left, True) if eta is None or left < eta else (eta, False)


def trained_models(family: str, overrides: dict) -> int:
    """How many training loops the run makes one after another: a blend's parts' members, or the model's own
    members, each twice with `refit` (a refit trains it again from the start)."""
    try:
        model = make_model(family, overrides)
    except RecsysError:
        return 1
    configs = [config for _, config in model.components()] or [model.config]
    flat = [flatten_config(config) for config in configs]
    return sum(int(f.get("members", 1)) * (2 if f.get("refit") else 1) for f in flat)


def cpu_budget(family: str, overrides: dict) -> float:
    """The run's CPU budget in seconds (0 when none, or the model has no training loop)."""
    try:
        return float(flatten_config(make_model(family, overrides).config).get("train.cpu_budget_s") or 0.0)
    except RecsysError:
        return 0.0  # a bad setting: run_experiment reports it with its own message


def run_job(store: Any, job_id: int) -> int:
    """Run job `job_id` to its end and record how it ended; the process's exit code."""
    store.mark_running(job_id, os.getpid())
    job = store.get(job_id)
    if job.cancel:  # cancelled (or its server died) between leaving the queue and this process starting
        if _SERVER_GONE.is_set():
            store.finish(job_id, "interrupted", error="the server that started it stopped; start it again")
        else:
            store.finish(job_id, "cancelled", message="cancelled before it started")
        return 0
    tuning = job.kind == TUNE_KIND  # a search (training/tune.py): its trials report through the plain reporter
    reporter = JobReporter(store, job_id) if tuning else Reporter(store, job_id, cpu_budget(job.family, job.overrides),
                                                                   trained_models(job.family, job.overrides))
    reporter.start()
    try:
        if tuning:
            summary = run_tune_job(store, job, reporter.progress)
            reporter.stop()
            store.finish(job_id, "cancelled" if summary["stopped"] == "cancelled" else "finished",
                         run_id=(summary["run_ids"] or [None])[0], result=summary)
            return 0
        ds = store.workspace.load_dataset(job.dataset)
        result = run_experiment(ds, job.family, job.overrides, split_kind=job.split, progress=reporter.progress,
                                workspace=store.workspace, dataset_name=job.dataset)
        reporter.stop()
        if result.status == "cancelled" and _SERVER_GONE.is_set():
            store.finish(job_id, "interrupted", run_id=result.run_id, result=result.summary(),
                         error=f"the server that started it stopped; the best weights so far were kept as run "
                               f"#{result.run_id} (labelled 'cancelled'); start it again to train further")
            return 0
        status = "cancelled" if result.status == "cancelled" else "finished"
        store.finish(job_id, status, run_id=result.run_id, result=result.summary())
        return 0
    except RecsysError as err:
        return _failed(store, job_id, reporter, str(err), "failed")
    except (KeyboardInterrupt, SystemExit):
        return _failed(store, job_id, reporter, "stopped by a signal (server shut down?); start it again",
                       "interrupted")
    except Exception as err:  # noqa: BLE001  the page must show why, not a dead row
        traceback.print_exc()  # into the job's log file
        return _failed(store, job_id, reporter, f"{type(err).__name__}: {err}", "failed")


def _failed(store: Any, job_id: int, reporter: Reporter, error: str, status: str) -> int:
    reporter.stop()
    # every tab shows the error: the server's folders in it are named as visitors name them
    store.finish(job_id, status, error=visible_text(store.workspace.root, error))
    return 1


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_job, which records the job as interrupted


def watch_parent(server_pid: int, on_gone: Any, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that calls `on_gone()` once this process's parent is no longer `server_pid`."""
    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(poll_s)
        on_gone()

    thread = threading.Thread(target=watch, name="server-watch", daemon=True)
    thread.start()
    return thread


def _server_gone(store: Any, job_id: int) -> None:
    """The server died: stop as a Cancel click does (the reporter reads the flag; the best weights are kept), then
    exit regardless."""
    _SERVER_GONE.set()
    try:
        store.request_cancel(job_id)
        store.report(job_id, message="the server stopped: keeping the best weights so far, then exiting")
    except Exception as err:  # noqa: BLE001  the workspace is gone too: exiting is all that is left
        print(f"server gone and the job row unreachable: {err}", file=sys.stderr)
    time.sleep(ORPHAN_GRACE_S)
    try:
        store.end_if_active(job_id, "interrupted", "the server that started it stopped; start it again")
    finally:
        os._exit(3)


def main() -> None:
    from recsys_core.workspace.jobs import JobStore
    from recsys_core.workspace.registry import Workspace

    root, job_id = sys.argv[1], int(sys.argv[2])
    server_pid = int(sys.argv[3]) if len(sys.argv) > 3 else os.getppid()
    store = JobStore(Workspace(root))
    # Below the web server's priority: a page redraw (or a Cancel click) must not wait behind training
    # that takes every core; on an otherwise idle machine the job still gets all of them.
    os.nice(NICENESS)
    # A fixed thread count, whatever else runs: results depend on it (recsys_core/threads.py says why).
    use_threads(training_threads())
    signal.signal(signal.SIGTERM, _terminate)
    watch_parent(server_pid, lambda: _server_gone(store, job_id))
    code = run_job(store, job_id)
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is recorded and every connection closed: skip the interpreter's teardown (over a second
    # with torch loaded), so a cancelled job frees its CPU and memory at once.
    os._exit(code)


if __name__ == "__main__":
    main()
