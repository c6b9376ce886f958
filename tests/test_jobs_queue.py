"""Training jobs under a cap: at most `max_jobs()` job processes at once on a machine, the rest queued in the
workspace in order, each with its place in line, cancellable while queued; a slot taken in one transaction, so
servers noticing it at once never pass the cap; and a killed server leaves no job running on, unsupervised."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from recsys_core.threads import cores
from recsys_core.training import jobs as training_jobs
from recsys_core.training.jobs import TrainingJob, max_jobs
from recsys_core.training.worker import watch_parent
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace
from tests.test_jobs import START_S, _sequences, _wait_for


@pytest.fixture
def store(tmp_path) -> JobStore:
    ws = Workspace(tmp_path / "ws")
    ws.save_dataset(_sequences(), "cycle")
    return JobStore(ws)


def test_the_cap_comes_from_the_machine_unless_the_operator_sets_it(monkeypatch):
    monkeypatch.delenv("RECSYS_MAX_JOBS", raising=False)
    monkeypatch.delenv("RECSYS_TRAINING_THREADS", raising=False)
    assert max_jobs() == max(1, cores() // 2)
    monkeypatch.setenv("RECSYS_TRAINING_THREADS", str(cores()))
    assert max_jobs() == 1  # jobs of every core each: one at a time
    for raw, expected in (("3", 3), ("0", 1), ("-2", 1), ("many", 1)):
        monkeypatch.setenv("RECSYS_MAX_JOBS", raw)
        assert max_jobs() == expected, raw  # a setting that is no count: the machine's default


def test_queued_jobs_wait_in_order_with_their_place_and_are_claimed_up_to_the_cap(store):
    ids = [store.create("cycle", "ease", {"l2": float(i)}, queued=True) for i in range(4)]
    other = JobStore(store.workspace)  # another tab or server reads the same queue
    assert [other.get(i).queue_position for i in ids] == [1, 2, 3, 4]
    assert all(other.get(i).status == "queued" and other.get(i).pid is None for i in ids)
    assert {j.id for j in other.list(active_only=True)} == set(ids)  # every tab lists them as active
    assert store.claim_queued(2) == ids[:2]  # oldest first, up to the cap
    assert store.claim_queued(2) == []  # both slots taken (pending, their processes starting)
    assert [other.get(i).queue_position for i in ids] == [0, 0, 1, 2]
    assert other.request_cancel(ids[3])  # cancelled while queued: at once, nothing ran
    row = other.get(ids[3])
    assert (row.status, row.queue_position, row.run_id) == ("cancelled", 0, None) and "never started" in row.message
    store.finish(ids[0], "finished")
    assert store.claim_queued(2) == [ids[2]]  # a slot freed: the next in line takes it
    assert store.sweep() == []  # queued and freshly claimed rows are not "lost"


def test_servers_claiming_at_once_never_pass_the_cap(store):
    ids = [store.create("cycle", "ease", queued=True) for _ in range(12)]
    claimed: list[int] = []
    lock, go = threading.Lock(), threading.Barrier(8)

    def server() -> None:
        mine = JobStore(store.workspace)  # each with its own connection, as separate processes have
        go.wait()
        for _ in range(5):
            got = mine.claim_queued(3)
            with lock:
                claimed.extend(got)

    threads = [threading.Thread(target=server) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claimed) == ids[:3]  # three slots, each taken once, by the oldest jobs


def test_a_job_beyond_the_cap_starts_when_the_running_one_ends(store, monkeypatch):
    monkeypatch.setenv("RECSYS_MAX_JOBS", "1")
    first = TrainingJob.start(store, "cycle", "ease", {"l2": 1.0})
    second = TrainingJob.start(store, "cycle", "ease", {"l2": 10.0})
    assert first.process is not None and second.process is None
    queued = JobStore(store.workspace).get(second.id)
    assert (queued.status, queued.queue_position, queued.pid) == ("queued", 1, None)
    assert first.record().status in ("pending", "running")  # the worker is still importing torch
    started_at_once, deadline = [], time.monotonic() + START_S
    while (first.running or second.running) and time.monotonic() < deadline:
        started_at_once.append(sum(j.status in ("pending", "running") for j in store.list(active_only=True)))
        time.sleep(0.05)
    assert max(started_at_once) == 1  # never two processes at once
    assert second.state == "finished", second.error  # the first one's reaper started it
    assert second.join(10) and first.state == "finished" and second.process.returncode == 0


SERVER = textwrap.dedent("""
    import sys, time
    from recsys_core.training.jobs import TrainingJob
    from recsys_core.workspace.jobs import JobStore
    from recsys_core.workspace.registry import Workspace
    settings = {"hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16, "epochs": 10000, "patience": 10000}
    job = TrainingJob.start(JobStore(Workspace(sys.argv[1])), "cycle", "sasrec", settings)
    print(job.id, flush=True)
    time.sleep(600)
""")
PR_SET_CHILD_SUBREAPER = 36


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a subreaper is a Linux feature")
def test_a_killed_server_leaves_no_job_running_on_and_nothing_unreaped(store):
    """As a reaping init would, this test adopts the orphaned worker (a child subreaper) and reaps it."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(store.workspace.root)], stdout=subprocess.PIPE,
                                  text=True, stdin=subprocess.DEVNULL)
        job_id = int(server.stdout.readline())
        _wait_for(lambda: store.get(job_id).curve.get("val"))  # one validation: there are weights to keep
        worker = store.get(job_id).pid
        assert psutil.Process(worker).ppid() == server.pid
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        killed = time.monotonic()
        status = _reap_within(worker, 60)  # adopted by this process, as by init: it must end on its own
        ended_s = time.monotonic() - killed
        assert not psutil.pid_exists(worker)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    record = store.get(job_id)
    assert ended_s < 30 and status == 0, (ended_s, status)
    assert record.status == "interrupted" and "server that started it stopped" in record.error
    assert store.workspace.get_run(record.run_id).status == "cancelled"  # the best weights were kept


def _reap_within(pid: int, timeout_s: float) -> int:
    """Exit code of our child `pid` once it ends; kills it (and fails) if it is still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the worker still ran {timeout_s:.0f} s after its server was killed")


def test_the_parent_watch_fires_once_the_parent_is_gone():
    gone = threading.Event()
    watch_parent(os.getppid(), gone.set, poll_s=0.01)
    assert not gone.wait(0.1)  # the parent lives
    watch_parent(-1, gone.set, poll_s=0.01)  # a pid that is not the parent: as after a server kill
    assert gone.wait(2)


def test_a_process_job_that_cannot_start_is_failed_not_left_pending(store, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(training_jobs.subprocess, "Popen", no_processes)
    job = TrainingJob.start(store, "cycle", "ease")
    record = job.record()
    assert record.status == "failed" and "could not be started" in record.error and job.process is None


def test_a_failed_jobs_error_names_workspace_paths_as_visitors_see_them(store):
    shutil.rmtree(store.workspace.get_dataset("cycle").path)  # its files are gone: the worker cannot read them
    job = TrainingJob.start(store, "cycle", "ease")
    assert job.join(START_S) and job.state == "failed", job.state
    assert job.error and str(store.workspace.root) not in job.error, job.error
    assert "workspace/datasets/" in job.error, job.error  # the missing folder is still named, as visible.py names it
