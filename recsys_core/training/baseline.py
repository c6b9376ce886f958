"""The automatic baseline of a dataset: the model pages' answer before anyone has trained a model.

A page that finds no finished run on its dataset calls `ensure_baseline`: it starts, at most once per saved
version of the dataset, a normal training job (a child process, under the job cap, listed in every tab's jobs
panel, cancellable) of EASE, or of popularity where EASE would not fit in memory (`refusal_of`). The job is a
row of the workspace's jobs table with kind `BASELINE_KIND`, so every tab and every server process on the
workspace finds the same one; a file lock beside the table makes "look for one, else create one" a single step
for threads and processes alike, so two tabs opening a page at once start one job.

A baseline job that ended without a run (cancelled, failed, interrupted) is not started again by itself: the next
call returns that job, so a Cancel click is not undone by the next page rerun (nor a failing fit retried in a
loop); `again=True`, a person's explicit request, starts a new one. A finished job whose run was deleted since is
replaced, as no finished run is left to serve.

The store is passed in (a `recsys_core.workspace.jobs.JobStore`), as `training.jobs` takes it: the workspace is a
layer above.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_core.errors import ConfigError, RecsysError
from recsys_core.models.base import family_class, refusal_of
from recsys_core.training.jobs import TrainingJob

BASELINE_KIND = "baseline"  # the jobs table's kind of an automatic baseline job
LOCK_NAME = ".baseline.lock"  # in the jobs folder: held while a call looks for the job and creates it


@dataclass(frozen=True)
class Baseline:
    """The automatic baseline of a dataset version: its job, and the run it recorded once finished."""

    job: Any  # JobRecord: queued, running, or how it ended
    run: Any | None  # RunRecord of the finished job's run while it exists, else None


def baseline_family(ds: Any) -> str:
    """EASE, or popularity where EASE refuses the data (its item-item matrices would not fit in memory)."""
    return "ease" if refusal_of("ease", None, ds) is None else "popularity"


def baseline_name(family: str) -> str:
    """The family as its one-line description names it ('EASE', 'Popularity'): in the job's title and the pages'
    words."""
    return family_class(family).description.split(":")[0]


def ensure_baseline(store: Any, dataset: str, ds: Any = None, *, again: bool = False) -> Baseline:
    """The automatic baseline job of the saved dataset `dataset` (its current version), started if there is none.

    Returns the job queued or running, or the one that ended since this version was saved (finished: with its
    run); starts a new one (queued under the job cap) when there is none, when the finished one's run was
    deleted, or, with `again`, when the last one ended without a run. `ds` is the loaded dataset, when the
    caller has it (else it is loaded to choose the family)."""
    record = store.workspace.get_dataset(dataset)
    if record is None:
        raise ConfigError(f"no dataset named {dataset!r} in the workspace", file=str(store.workspace.root),
                          hint="pick one of the saved datasets or load a file first")
    with _locked(Path(store.logs_dir) / LOCK_NAME):
        job = _latest(store, dataset, record.created_at)
        if job is not None:
            run = _run_of(store, job)
            if job.active or run is not None or (job.status != "finished" and not again):
                return Baseline(job, run)
        family = baseline_family(ds if ds is not None else store.workspace.load_dataset(dataset))
        started = TrainingJob.start(store, dataset, family, kind=BASELINE_KIND,
                                    title=f"Automatic baseline: {baseline_name(family)}")  # the jobs panels' words
        return Baseline(started.record(), None)


def _latest(store: Any, dataset: str, version_saved_at: str) -> Any | None:
    """The newest baseline job of `dataset` created since its current version was saved (ISO times compare
    as text), or None."""
    jobs = store.list(dataset=dataset, kind=BASELINE_KIND, limit=1)
    return jobs[0] if jobs and jobs[0].created_at >= version_saved_at else None


def _run_of(store: Any, job: Any) -> Any | None:
    """The run a finished job recorded, while it and its files exist."""
    if job.status != "finished" or job.run_id is None:
        return None
    try:
        run = store.workspace.get_run(job.run_id)
    except RecsysError:  # deleted since
        return None
    return run if run.artifact_dir and Path(run.artifact_dir).is_dir() else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` for this block. Each call opens the file anew, so the lock excludes other
    threads of this process as well as other processes (flock belongs to the open file, not the process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
