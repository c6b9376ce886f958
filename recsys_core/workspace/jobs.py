"""Long jobs owned by the workspace, not by a browser tab: table `jobs` in `workspace.db`.

A page creates a row, a child process (`recsys_core.training.worker`) runs the job and writes its
progress here; any tab of any server on this workspace lists the rows, shows progress and sets the
cancel flag, which the child polls between steps. A row still `pending`/`running` whose process is
gone (server killed, machine rebooted, OOM killer) is marked `interrupted` whenever jobs are listed,
so no job is ever shown as running without a live process behind it.

Writes are single UPDATE statements (atomic in SQLite's autocommit mode); every operation opens
its own connection, as the registry does, so threads and processes can share one store.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys_core.errors import ConfigError

ACTIVE = ("pending", "running")
ENDED = ("finished", "cancelled", "failed", "interrupted")
_PENDING_GRACE_S = 120  # a row never picked up by a child within this long lost its launcher

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
# Progress columns the child may write; column names cannot be bound as parameters, so they are whitelisted.
_PROGRESS_FIELDS = ("fraction", "step", "total", "epoch", "loss", "metrics", "curve", "message", "eta_s",
                    "eta_bounded", "elapsed_s")
_JSON_FIELDS = ("overrides", "metrics", "curve", "result")


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
    result: dict  # `RunResult.summary()` once the run is recorded
    created_at: str
    updated_at: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process on this machine (a zombie, dead but not yet reaped, is not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): trust kill(0)
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

    def create(self, dataset: str, family: str, overrides: dict | None = None, split: str = "leave_one_out",
               kind: str = "train") -> int:
        """A new `pending` job; returns its id."""
        now = _now()
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (kind, dataset, family, overrides, split, host, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, dataset, family, json.dumps(overrides or {}), split, socket.gethostname(), now, now))
            return int(cur.lastrowid)

    def log_path(self, job_id: int) -> Path:
        """Where the job's process writes its stdout/stderr (crash messages land here)."""
        return self.logs_dir / f"job-{job_id:05d}.log"

    def set_pid(self, job_id: int, pid: int) -> None:
        self._update(job_id, pid=pid)

    def request_cancel(self, job_id: int) -> bool:
        """Set the cancel flag of an active job (from any tab); False when it had already ended."""
        return self._update(job_id, "AND status IN ('pending', 'running')", cancel=1)

    def end_if_active(self, job_id: int, status: str, error: str) -> bool:
        """Mark a job ended unless its process already recorded how it ended (used when that process died)."""
        return self._update(job_id, "AND status IN ('pending', 'running')", status=status, error=error, pid=None)

    # ---- the job process's side --------------------------------------------------------------

    def mark_running(self, job_id: int, pid: int) -> None:
        self._update(job_id, status="running", pid=pid, host=socket.gethostname())

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
        self._update(job_id, status=status, run_id=run_id, result=result or {}, error=error, pid=None,
                     eta_s=None, **extra)

    # ---- reading -----------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no job with id {job_id} in the workspace", file=str(self.db_path),
                              hint="pick a job from the list on the Train page")
        return _record(row)

    def list(self, dataset: str | None = None, active_only: bool = False, limit: int = 50) -> list[JobRecord]:
        """Jobs, newest first (after marking dead ones `interrupted`)."""
        self.sweep()
        clauses, params = [], []
        if dataset is not None:
            clauses.append("dataset = ?")
            params.append(dataset)
        if active_only:
            clauses.append("status IN ('pending', 'running')")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM jobs{where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_record(r) for r in rows]

    def sweep(self) -> list[int]:
        """Mark `interrupted` every active job of this machine whose process is gone; returns their ids."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id, pid, host, created_at FROM jobs WHERE status IN ('pending', 'running')"
                                " AND host = ?", (socket.gethostname(),)).fetchall()
        gone = [r["id"] for r in rows if _lost(r["pid"], r["created_at"])]
        for job_id in gone:
            self.end_if_active(job_id, "interrupted", "the job's process stopped without recording a result "
                                                      "(server restarted or process killed); start it again")
        return gone


def _lost(pid: int | None, created_at: str) -> bool:
    if pid is not None:
        return not process_alive(pid)
    age = time.time() - datetime.fromisoformat(created_at).timestamp()
    return age > _PENDING_GRACE_S


def _record(row: sqlite3.Row) -> JobRecord:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118  sqlite3.Row iterates values, not keys
    for key in _JSON_FIELDS:
        values[key] = json.loads(values[key] or "{}")
    values["cancel"], values["eta_bounded"] = bool(values["cancel"]), bool(values["eta_bounded"])
    return JobRecord(**values)
