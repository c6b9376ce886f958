"""Long jobs owned by the workspace, not by a browser tab: table `jobs` in `workspace.db`.

A page creates a row; training runs in a child process (`recsys_core.training.worker`), other long
work (maps, global explanations, exports, blurb batches) on a thread of the server process
(`recsys_core.background.WorkspaceJob`). Either writes its progress here; any tab of any server on
this workspace lists the rows, shows progress and sets the cancel flag, which the job polls between
steps. A row still `pending`/`running` whose process is gone (server killed, machine rebooted, OOM
killer) is marked `interrupted` whenever jobs are listed, so no job is ever shown as running without
a live process behind it. A thread job is also lost when its row names this very process but no
thread of it runs the job (a restarted container often gets the same pid back).

Training jobs run under a cap (`training.jobs.max_jobs`): a new one is `queued`, and `claim_queued` turns the
oldest queued rows into `pending` ones while fewer than the cap run on this machine, inside one write
transaction, so two servers (or two threads) noticing a free slot at once never both take it. A queued row
has no process: the sweep leaves it alone, any tab shows its place in line and may cancel it.

A job's result lives in the workspace too: small values in the row's `result` (JSON), arrays as
`.npy` and tables as `.parquet` in `jobs/job-<id>/` (written to a temporary folder, then renamed),
so a reload or another tab reads the last finished result without recomputing it. No pickle.

Writes are single UPDATE statements (atomic in SQLite's autocommit mode); every operation opens
its own connection, as the registry does, so threads and processes can share one store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from recsys_core.errors import ConfigError

ACTIVE = ("queued", "pending", "running")
ENDED = ("finished", "cancelled", "failed", "interrupted")
_PENDING_GRACE_S = 120  # a row made pending but never picked up by a child within this long lost its launcher

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL DEFAULT 'train',
    dataset TEXT NOT NULL,
    family TEXT NOT NULL,
    overrides TEXT NOT NULL DEFAULT '{}',
    split TEXT NOT NULL DEFAULT 'leave_one_out',
    status TEXT NOT NULL DEFAULT 'pending',
    fraction REAL NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    curve TEXT NOT NULL DEFAULT '{}',
    message TEXT NOT NULL DEFAULT '',
    eta_s REAL,
    eta_bounded INTEGER NOT NULL DEFAULT 0,
    elapsed_s REAL NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    error TEXT NOT NULL DEFAULT '',
    run_id INTEGER,
    result TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_dataset_status ON jobs(dataset, status);
"""
# Columns added after the first release: workspaces created before them get them on open.
_ADDED_COLUMNS = (
    ("owner", "TEXT NOT NULL DEFAULT ''"),  # the browser session that started the job (any tab may cancel it)
    ("runner", "TEXT NOT NULL DEFAULT 'process'"),  # 'process' (a child of its own) or 'thread' (in the server)
    ("title", "TEXT NOT NULL DEFAULT ''"),  # what a jobs panel shows, in words
)
_IN_PROCESS: set[tuple[str, int]] = set()  # (db path, job id) of thread jobs this process is running now
_IN_PROCESS_LOCK = threading.Lock()
# Progress columns the child may write; column names cannot be bound as parameters, so they are whitelisted.
_PROGRESS_FIELDS = ("fraction", "step", "total", "epoch", "loss", "metrics", "curve", "message", "eta_s",
                    "eta_bounded", "elapsed_s")
_JSON_FIELDS = ("overrides", "metrics", "curve", "result")
# Every read adds the job's place in the queue (1 = next to start; 0 when not queued), counted across kinds.
_SELECT = ("SELECT *, CASE WHEN status = 'queued' THEN (SELECT COUNT(*) FROM jobs AS q WHERE q.status = 'queued' "
           "AND q.id <= jobs.id) ELSE 0 END AS queue_position FROM jobs")


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: what runs, how far it is, how it ended."""

    id: int
    kind: str
    dataset: str
    family: str
    overrides: dict
    split: str
    status: str
    fraction: float
    step: int
    total: int
    epoch: int
    loss: float | None
    metrics: dict
    curve: dict  # {"loss": [[step, loss], ...], "val": [[epoch, metrics, elapsed_s], ...]}
    message: str
    eta_s: float | None
    eta_bounded: bool  # the ETA is capped by the run's CPU budget
    elapsed_s: float
    cancel: bool
    host: str
    pid: int | None
    error: str
    run_id: int | None
    result: dict  # `RunResult.summary()` once the run is recorded; a thread job's small results
    created_at: str
    updated_at: str
    owner: str = ""
    runner: str = "process"
    title: str = ""
    queue_position: int = 0  # 1 = the next queued job to start; 0 when it is not queued

    @property
    def params(self) -> dict:
        """A thread job's parameters (stored where a training job keeps its overrides)."""
        return self.overrides

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def queued(self) -> bool:
        return self.status == "queued"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process on this machine (a zombie, dead but not yet reaped, is not)."""
    if not pid or pid < 0:  # kill(-1, 0) would answer for every process we may signal
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone, or a pid out of range
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
        return True


class JobStore:
    """The `jobs` table of a workspace; a job process opens its own from the workspace path."""

    def __init__(self, workspace: Any) -> None:
        self.workspace = workspace
        self.db_path = Path(workspace.db_path)
        self.logs_dir = Path(workspace.root) / "jobs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            _migrate(conn)
        self.sweep()  # a server starting up marks the jobs its predecessor left behind

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def _update(self, job_id: int, where: str = "", **fields: Any) -> bool:
        values = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
        values["updated_at"] = _now()
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as conn:
            cur = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? {where}", (*values.values(), job_id))
        return cur.rowcount > 0

    # ---- the launcher's side -----------------------------------------------------------------

    def create(self, dataset: str, family: str = "", overrides: dict | None = None, split: str = "leave_one_out",
               kind: str = "train", *, params: dict | None = None, owner: str = "", runner: str = "process",
               title: str = "", queued: bool = False) -> int:
        """A new `pending` job (`queued` when it must wait for a slot); returns its id. `params` (a thread job's
        settings) share the `overrides` column."""
        now = _now()
        settings = json.dumps(params if params is not None else overrides or {}, sort_keys=True)
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (kind, dataset, family, overrides, split, status, host, owner, runner, title,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, dataset, family, settings, split, "queued" if queued else "pending", socket.gethostname(),
                 owner, runner, title, now, now))
            return int(cur.lastrowid)

    def claim_queued(self, cap: int) -> list[int]:
        """Make the oldest queued jobs `pending` while fewer than `cap` job processes (training, tuning) run on this
        machine; their ids, for the caller to start. One write transaction (BEGIN IMMEDIATE): of two servers or
        threads noticing a free slot at once, one takes it and the other sees it taken."""
        self.sweep()  # a dead job's process must not hold a slot
        host = socket.gethostname()
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is None:
                return []  # the common case, read without taking the write lock
            conn.execute("BEGIN IMMEDIATE")
            try:
                busy = conn.execute("SELECT COUNT(*) FROM jobs WHERE runner = 'process' AND status IN"
                                    " ('pending', 'running') AND host = ?", (host,)).fetchone()[0]
                rows = conn.execute("SELECT id FROM jobs WHERE status = 'queued' AND runner = 'process' ORDER BY id"
                                    " LIMIT ?", (max(0, cap - busy),)).fetchall()
                ids = [int(r["id"]) for r in rows]
                conn.executemany("UPDATE jobs SET status = 'pending', host = ?, pid = NULL, message = '',"
                                 " updated_at = ? WHERE id = ?", [(host, _now(), i) for i in ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ids

    def log_path(self, job_id: int) -> Path:
        """Where the job's process writes its stdout/stderr (crash messages land here)."""
        return self.logs_dir / f"job-{job_id:05d}.log"

    def set_pid(self, job_id: int, pid: int) -> None:
        self._update(job_id, pid=pid)

    def request_cancel(self, job_id: int) -> bool:
        """Set the cancel flag of an active job (from any tab); a queued one, which never started, is cancelled
        at once. False when it had already ended."""
        if self._update(job_id, "AND status = 'queued'", cancel=1, status="cancelled",
                        message="cancelled while queued: it never started"):
            return True
        return self._update(job_id, "AND status IN ('pending', 'running')", cancel=1)

    def end_if_active(self, job_id: int, status: str, error: str) -> bool:
        """Mark a started job ended unless its process already recorded how it ended (used when that process
        died, or could not be started)."""
        return self._update(job_id, "AND status IN ('pending', 'running')", status=status, error=error, pid=None)

    # ---- the job process's side --------------------------------------------------------------

    def mark_running(self, job_id: int, pid: int) -> None:
        self._update(job_id, status="running", pid=pid, host=socket.gethostname())

    def claim(self, job_id: int) -> None:
        """This process runs thread job `job_id` now (until `finish`): the sweep leaves it alone."""
        with _IN_PROCESS_LOCK:
            _IN_PROCESS.add((str(self.db_path), job_id))
        self.mark_running(job_id, os.getpid())

    def report(self, job_id: int, **progress: Any) -> None:
        """Write progress fields (see `_PROGRESS_FIELDS`); the caller throttles how often."""
        unknown = set(progress) - set(_PROGRESS_FIELDS)
        if unknown:
            raise ValueError(f"report: unknown field(s) {sorted(unknown)}; allowed: {list(_PROGRESS_FIELDS)}")
        self._update(job_id, **progress)

    def cancel_requested(self, job_id: int) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def finish(self, job_id: int, status: str, *, run_id: int | None = None, result: dict | None = None,
               error: str = "", message: str | None = None) -> None:
        """Record how the job ended: one of `ENDED`."""
        if status not in ENDED:
            raise ValueError(f"finish: status {status!r} is not one of {ENDED}")
        extra = {"message": message} if message is not None else {}
        if status == "finished":
            extra["fraction"] = 1.0
        self._update(job_id, status=status, run_id=run_id, result=result or {}, error=error, pid=None,
                     eta_s=None, **extra)
        with _IN_PROCESS_LOCK:
            _IN_PROCESS.discard((str(self.db_path), job_id))

    # ---- results of thread jobs --------------------------------------------------------------

    def result_dir(self, job_id: int) -> Path:
        return self.logs_dir / f"job-{job_id:05d}"

    def save_result(self, job_id: int, result: dict[str, Any]) -> dict:
        """Write arrays (.npy) and tables (.parquet) of `result` to the job's folder; returns the rest
        (JSON-able values, for `finish(result=...)`). The folder appears complete or not at all."""
        final, tmp = self.result_dir(job_id), self.logs_dir / f".job-{job_id:05d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        small: dict = {}
        for name, value in result.items():
            if not name.isidentifier():
                raise ValueError(f"save_result: result name {name!r} must be a plain identifier")
            if isinstance(value, np.ndarray):
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
            elif isinstance(value, pd.DataFrame):
                value.to_parquet(tmp / f"{name}.parquet", index=False)
            else:
                small[name] = value
        json.dumps(small)  # fail here, before the row is touched, if a value is not JSON
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return small

    def load_result(self, job_id: int) -> dict[str, Any]:
        """A finished job's result: its JSON values, arrays and tables (never unpickled)."""
        out = dict(self.get(job_id).result)
        folder = self.result_dir(job_id)
        for path in sorted(folder.glob("*.npy")) if folder.is_dir() else []:
            out[path.stem] = np.load(path, allow_pickle=False)
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            out[path.stem] = pd.read_parquet(path)
        return out

    # ---- reading -----------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord:
        with self._connect() as conn:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no job with id {job_id} in the workspace", file=str(self.db_path),
                              hint="pick a job from the list on the Train page")
        return _record(row)

    def list(self, dataset: str | None = None, active_only: bool = False, limit: int = 50,
             kind: str | None = "train", owner: str | None = None) -> list[JobRecord]:
        """Jobs of one kind ('train' unless asked; None for every kind), newest first, after marking dead
        ones `interrupted`."""
        self.sweep()
        clauses, params = [], []
        for column, value in (("dataset", dataset), ("kind", kind), ("owner", owner)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if active_only:
            clauses.append("status IN ('queued', 'pending', 'running')")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(f"{_SELECT}{where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_record(r) for r in rows]

    def latest(self, kind: str, dataset: str, params: dict, status: str | None = "finished") -> JobRecord | None:
        """The newest job of `kind` on `dataset` with exactly these parameters (and `status`, unless None)."""
        self.sweep()
        sql = f"{_SELECT} WHERE kind = ? AND dataset = ? AND overrides = ?"
        args: list = [kind, dataset, json.dumps(params, sort_keys=True)]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        with self._connect() as conn:
            row = conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _record(row) if row is not None else None

    def sweep(self) -> list[int]:
        """Mark `interrupted` every started job of this machine whose process is gone; returns their ids (a queued
        job has no process: it waits for a slot)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id, pid, host, runner, updated_at FROM jobs WHERE status IN"
                                " ('pending', 'running') AND host = ?", (socket.gethostname(),)).fetchall()
        gone = [r["id"] for r in rows if _lost(r["pid"], r["updated_at"])
                or (r["runner"] == "thread" and r["pid"] == os.getpid() and not self._runs_here(r["id"]))]
        for job_id in gone:
            self.end_if_active(job_id, "interrupted", "the job's process stopped without recording a result "
                                                      "(server restarted or process killed); start it again")
        return gone

    def _runs_here(self, job_id: int) -> bool:
        with _IN_PROCESS_LOCK:
            return (str(self.db_path), job_id) in _IN_PROCESS


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a workspace made by an older version lacks (SQLite has no ADD COLUMN IF NOT EXISTS)."""
    have = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, ddl in _ADDED_COLUMNS:
        if name in have:
            continue
        try:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {ddl}")
        except sqlite3.OperationalError as err:  # another process added it between our look and our write
            if "duplicate column" not in str(err):
                raise


def _lost(pid: int | None, updated_at: str) -> bool:
    if pid is not None:
        return not process_alive(pid) and not _reaped_here(pid)
    age = time.time() - datetime.fromisoformat(updated_at).timestamp()  # since it was made pending (or claimed)
    return age > _PENDING_GRACE_S


def _reaped_here(pid: int) -> bool:
    """A dead child of this process not yet waited for: the thread that launched it is about to record how it ended
    (e.g. "stopped by SIGKILL"), which a sweep's "process gone" would otherwise overwrite first."""
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE and process.ppid() == os.getpid()
    except psutil.Error:
        return False


def _record(row: sqlite3.Row) -> JobRecord:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118  sqlite3.Row iterates values, not keys
    for key in _JSON_FIELDS:
        values[key] = json.loads(values[key] or "{}")
    values["cancel"], values["eta_bounded"] = bool(values["cancel"]), bool(values["eta_bounded"])
    return JobRecord(**values)
