"""The automatic baseline as a workspace job (`training/baseline.py`): one job per dataset version however many
tabs, threads or server processes ask at once; its finished run is the dataset's best run; a baseline job that
ended without a run is not restarted by the next page rerun, only when asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

from recsys_core.recommend.catalogue import best_run
from recsys_core.training import jobs as training_jobs
from recsys_core.training.baseline import BASELINE_KIND, ensure_baseline
from recsys_core.training.jobs import TrainingJob, dispatch
from recsys_core.training.worker import run_job
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace
from tests.test_jobs import START_S, _sequences

# Another server process: once it has imported the engine it says "ready", asks for the baseline when told "go"
# (the job left queued: nothing is launched from a process about to exit) and prints the job id it was given.
_ASKER = textwrap.dedent("""
    import sys
    from recsys_core.training import jobs
    from recsys_core.training.baseline import ensure_baseline
    from recsys_core.workspace.jobs import JobStore
    from recsys_core.workspace.registry import Workspace
    jobs.dispatch = lambda store: []
    jobs.watch_queue = lambda store: None
    store = JobStore(Workspace(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    print(ensure_baseline(store, "cycle").job.id, flush=True)
""")


@pytest.fixture
def store(tmp_path) -> JobStore:
    ws = Workspace(tmp_path / "ws")
    ws.save_dataset(_sequences(), "cycle")
    return JobStore(ws)


@pytest.fixture
def queued_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs stay queued: these tests look at the rows, no worker process is started."""
    monkeypatch.setattr(training_jobs, "dispatch", lambda store: [])
    monkeypatch.setattr(training_jobs, "watch_queue", lambda store: None)


def _baseline_jobs(store: JobStore) -> list:
    return store.list(dataset="cycle", kind=BASELINE_KIND)


def test_threads_and_processes_asking_at_once_start_one_job(store, queued_only) -> None:
    child = subprocess.Popen([sys.executable, "-c", _ASKER, str(store.workspace.root)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    ids, barrier = [], threading.Barrier(7)

    def ask() -> None:
        barrier.wait()
        ids.append(ensure_baseline(store, "cycle").job.id)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    assert child.stdout.readline().strip() == "ready"
    child.stdin.write("go\n")
    child.stdin.flush()
    barrier.wait()  # the six threads ask as the other process does
    for t in threads:
        t.join()
    ids.append(int(child.communicate(timeout=START_S)[0]))
    assert len(ids) == 7 and len(set(ids)) == 1, ids
    (job,) = _baseline_jobs(store)
    assert (job.family, job.title, job.status) == ("ease", "Automatic baseline: EASE", "queued")  # the panels' words


def test_the_finished_baseline_job_records_the_best_run_and_is_not_started_again(store, queued_only) -> None:
    job = ensure_baseline(store, "cycle").job
    assert store.claim_queued(1) == [job.id]
    assert run_job(store, job.id) == 0  # what its worker process runs (tests/test_jobs.py launches real ones)
    done = ensure_baseline(store, "cycle")
    assert (done.job.id, done.job.status) == (job.id, "finished") and done.run is not None
    best = best_run(store.workspace, "cycle")
    assert best is not None and best.id == done.run.id == done.job.run_id and best.model == "ease"
    assert best.status == "finished" and best.metrics["ndcg@10"] > 0
    assert len(_baseline_jobs(store)) == 1  # a later call (a page rerun) starts nothing


def test_a_cancelled_baseline_is_not_restarted_by_the_next_call_only_when_asked(store, queued_only) -> None:
    first = ensure_baseline(store, "cycle").job
    assert first.status == "queued" and first.kind == BASELINE_KIND
    assert store.request_cancel(first.id)
    for _ in range(3):  # page reruns: the cancelled job is the answer, nothing new is queued
        again = ensure_baseline(store, "cycle")
        assert (again.job.id, again.job.status, again.run) == (first.id, "cancelled", None)
    asked = ensure_baseline(store, "cycle", again=True).job
    assert asked.id != first.id and asked.status == "queued"
    assert ensure_baseline(store, "cycle", again=True).job.id == asked.id  # never two at once, even when asked
    assert [j.id for j in _baseline_jobs(store)] == [asked.id, first.id]


def test_a_failed_one_waits_for_a_request_and_a_deleted_run_is_replaced(store, queued_only) -> None:
    failed = ensure_baseline(store, "cycle").job
    store.finish(failed.id, "failed", error="boom")
    assert ensure_baseline(store, "cycle").job.id == failed.id
    done = ensure_baseline(store, "cycle", again=True).job
    folder = store.workspace.models_dir() / "run-baseline"
    folder.mkdir(parents=True)
    run_id = store.workspace.record_run("cycle", "ease", {}, {"ndcg@10": 0.1}, "cpu", 1.0, folder)
    store.finish(done.id, "finished", run_id=run_id)
    assert ensure_baseline(store, "cycle").run.id == run_id
    store.workspace.delete_run(run_id)  # nothing left to serve: a new baseline is trained
    assert ensure_baseline(store, "cycle").job.id not in (failed.id, done.id)


def test_a_new_version_of_the_dataset_gets_its_own_baseline(store, queued_only) -> None:
    old = ensure_baseline(store, "cycle").job
    store.request_cancel(old.id)
    time.sleep(1.1)  # versions are told apart by their save time, in whole seconds
    store.workspace.save_dataset(_sequences(n_users=60), "cycle", overwrite=True)
    new = ensure_baseline(store, "cycle").job
    assert new.id != old.id and new.status == "queued"


def test_popularity_where_ease_would_not_fit_in_memory(store, queued_only, monkeypatch) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1024))
    job = ensure_baseline(store, "cycle").job
    assert (job.family, job.title) == ("popularity", "Automatic baseline: Popularity")


def test_a_dataset_that_is_not_saved_is_a_config_error_with_a_hint(store) -> None:
    from recsys_core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        ensure_baseline(store, "nope")
    assert err.value.hint and not _baseline_jobs(store)


def test_the_queue_cap_holds_the_baseline_like_any_job(store, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_MAX_JOBS", "1")
    monkeypatch.setattr(training_jobs, "watch_queue", lambda store: None)
    monkeypatch.setattr(training_jobs, "dispatch", lambda store: [])
    other = TrainingJob.start(store, "cycle", "popularity")
    assert store.claim_queued(1) == [other.id]  # a training job holds the one slot (its process never starts)
    job = ensure_baseline(store, "cycle").job
    assert dispatch(store) == [] and store.get(job.id).status == "queued" and store.get(job.id).queue_position == 1
