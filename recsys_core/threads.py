"""How many threads each kind of work may use, so the sessions and jobs of one shared server do not spin
against each other.

Why (issue 12, 2-core box): the global view for 100 users with EASE takes 0.7 s idle; beside six busy
processes it takes 29.2 s with torch's default intra-op threads and 3.4 s with one, because OpenMP
threads busy-wait at every barrier when there are more threads than free cores. A shared demo server
always has other work beside a click (other sessions, a training job), so:

- interactive work in the server process (scoring, top-K, SHAP, maps) uses `RECSYS_INTERACTIVE_THREADS`
  threads, default 1: a click never fights itself, and several sessions share the cores fairly;
- a training job (its own process, below the server's priority) uses `RECSYS_TRAINING_THREADS`, default 1,
  whatever else runs: torch's CPU results depend on the thread count (reduction order), and a run must give
  exactly the result it gives alone (a test trains two same-seed jobs at once and compares them with the solo
  run). One, not every core, because a budget counts CPU seconds (issue 21): beside other work, a two-thread
  step of SASRec+ on the demo cost 0.22 CPU s against 0.04-0.05 on one thread (load 2-3 on 2 cores), so the
  same budget bought a different model depending on the load; on one thread a CPU second is the same work
  at any load, and the time estimate (measured on one thread in the server) is the job's own rate.

The same count goes to torch and to the BLAS/OpenMP pools numpy and scikit-learn use (threadpoolctl).
"""

from __future__ import annotations

import os

import torch

INTERACTIVE_ENV = "RECSYS_INTERACTIVE_THREADS"
TRAINING_ENV = "RECSYS_TRAINING_THREADS"
_limits: list = []  # the live threadpoolctl limiter (dropping it would restore the old pools)


def cores() -> int:
    """CPUs this process may run on (the affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:  # a typo in the operator's setting must not stop the server
        return default


def interactive_threads() -> int:
    return _from_env(INTERACTIVE_ENV, 1)


def training_threads() -> int:
    return _from_env(TRAINING_ENV, 1)


def use_threads(n: int) -> int:
    """Limit torch and the BLAS/OpenMP pools of this process to `n` threads; returns `n`."""
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if not _limits or _limits[0][0] != n:  # inspecting the loaded BLAS libraries costs milliseconds: once
        _limits[:] = [(n, threadpool_limits(limits=n))]
    return n
