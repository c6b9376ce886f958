"""The workspace: a folder of saved datasets (Parquet) and trained runs, indexed by SQLite.

Layout of `<root>` (default `./workspace`, or `$RECSYS_WORKSPACE`):

    workspace.db                 SQLite (WAL): tables `datasets` and `runs`
    datasets/<name>/<version>/   one `Dataset.save` folder per saved version; the db row points at one
    models/                      run artifacts (the training code picks sub-folders)
    .tmp/                        half-written folders; same filesystem, so renames out of it are atomic

Why versions: POSIX cannot atomically rename a folder over a non-empty one, so an overwrite writes
a new version folder and the SQLite transaction that points the name at it is the commit point.
Readers always see either the old or the new complete folder; the old one is removed afterwards.

The jail: every path a form or config names (a model folder, a checkpoint_dir, an LLM folder) goes
through `Workspace.resolve_inside`, which refuses anything outside the workspace and `$RECSYS_ALLOWED_PATHS`.

Several Streamlit sessions (threads) and processes may share a workspace: every operation opens its
own connection (`timeout=30`), writes run in `BEGIN IMMEDIATE` transactions, queries are parametrised.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys_core.data.dataset import Dataset
from recsys_core.data.demo import DEMO_NAME, demo_source, load_demo
from recsys_core.errors import ConfigError, DataError

ENV_VAR = "RECSYS_WORKSPACE"
ALLOWED_ENV = "RECSYS_ALLOWED_PATHS"  # extra folders forms may name, os.pathsep-separated (operator only)
DB_FILE = "workspace.db"
SCHEMA_VERSION = 1
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit, and no '..'"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STALE_TMP_S = 3600  # a temp folder this old belongs to a crashed writer (the start-up sweep)
SWEEP_GRACE_S = 900  # the timer's grace: no save runs 15 minutes without writing a file
UPLOAD_KEEP_S = 24 * 3600  # an imported model folder is kept a day (a session using it loaded it already)
SWEEP_EVERY_S = 300
_SWEEPERS: dict[Path, threading.Thread] = {}
_SWEEPERS_LOCK = threading.Lock()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    source_file TEXT NOT NULL DEFAULT '',
    n_users INTEGER NOT NULL,
    n_items INTEGER NOT NULL,
    n_interactions INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    device TEXT NOT NULL DEFAULT '',
    wall_s REAL,
    artifact_dir TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT 'leave_one_out',
    status TEXT NOT NULL DEFAULT 'finished',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_dataset ON runs(dataset);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns `update_run` may set; column names cannot be bound as parameters, so they are whitelisted.
_RUN_FIELDS = ("dataset", "model", "config", "metrics", "device", "wall_s", "artifact_dir", "split", "status")
_JSON_FIELDS = ("config", "metrics")


@dataclass(frozen=True)
class DatasetRecord:
    """One saved dataset as listed in the workspace."""

    name: str
    source_file: str
    n_users: int
    n_items: int
    n_interactions: int
    created_at: str  # ISO 8601, UTC
    path: Path


@dataclass(frozen=True)
class RunRecord:
    """One training run: what was trained on what, how it scored, where its artifacts are."""

    id: int
    dataset: str
    model: str
    config: dict
    metrics: dict
    device: str
    wall_s: float | None
    artifact_dir: Path | None
    split: str
    status: str
    created_at: str
    updated_at: str


MAX_NAME_BYTES = 255  # the longest file or folder name Linux, macOS and Windows file systems take


def allowed_roots() -> list[Path]:
    """Folders outside the workspace that forms may still name: `$RECSYS_ALLOWED_PATHS`, set by the operator."""
    raw = os.environ.get(ALLOWED_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def validate_name(name: str) -> str:
    """Return `name` if it is a safe dataset name (see NAME_RULE), else raise DataError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid dataset name {name!r}", hint=f"use {NAME_RULE}")
    return name


def safe_name(text: str) -> str:
    """A valid dataset name derived from free text, e.g. a file name ('my ratings.csv' -> 'my_ratings')."""
    stem = Path(str(text)).name
    stem = re.sub(r"\.(csv|tsv|txt|dat|data|parquet|zip|gz)$", "", stem, flags=re.IGNORECASE)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    slug = re.sub(r"\.{2,}", ".", slug).strip("._-")[:64]
    return slug or "dataset"


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, so a rename publishes complete files
    even if the machine loses power right after."""
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
        fsync_path(path)
    fsync_path(folder)


def fsync_path(path: Path) -> None:
    """Flush one file or folder (a folder's entry list, so a rename inside it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _newest_mtime(path: Path) -> float | None:
    """The newest modification time of `path` and (a folder) everything in it; None when it is gone."""
    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for inner in path.rglob("*"):
                newest = max(newest, inner.lstat().st_mtime)
    except FileNotFoundError:  # another process swept it first
        return None
    return newest


def start_sweeper(ws: Workspace, every_s: float = SWEEP_EVERY_S) -> threading.Thread:
    """Sweep `ws`'s leftovers every `every_s` seconds in one daemon thread per workspace and process (later
    calls return the running one), so a killed save's temp folder goes within `SWEEP_GRACE_S` + `every_s`
    instead of waiting for a restart."""
    with _SWEEPERS_LOCK:
        running = _SWEEPERS.get(ws.root)
        if running is not None and running.is_alive():
            return running

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    ws.sweep_leftovers()
                except (OSError, sqlite3.Error):  # a busy or vanished workspace: try again next time
                    continue

        thread = threading.Thread(target=loop, name=f"sweep {ws.root.name}", daemon=True)
        thread.start()
        _SWEEPERS[ws.root] = thread
        return thread


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Workspace:
    """Datasets and runs under one folder; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ.get(ENV_VAR) or "workspace").resolve()
        for sub in ("datasets", "models", ".tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_FILE
        self._init_db()
        self._sweep_tmp()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ---- SQLite plumbing ---------------------------------------------------------------------

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection per operation; `write=True` holds the write lock for the whole block."""
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _init_db(self) -> None:
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        finally:
            conn.close()

    def _sweep_tmp(self, grace_s: float = _STALE_TMP_S) -> None:
        """At start-up: `sweep_leftovers` with an hour's grace (the timer, `start_sweeper`, uses a shorter one)."""
        self.sweep_leftovers(grace_s)

    def sweep_leftovers(self, grace_s: float = SWEEP_GRACE_S, upload_age_s: float = UPLOAD_KEEP_S) -> list[Path]:
        """Remove what crashed or killed writers left: temp folders (`.tmp/*`, a model import's
        `models/uploaded-*.tmp`), run folders no run points at, dataset versions no dataset points at, all
        untouched for `grace_s` (the newest file inside counts, so a save still writing is never touched);
        and imported models (`models/uploaded-*`) older than `upload_age_s`, which no run record keeps.
        Returns what was removed."""
        now = time.time()
        recorded = self._recorded_folders()
        models = self.root / "models"
        temporary = [*(self.root / ".tmp").iterdir(), *models.glob("uploaded-*.tmp"),
                     *(p for p in models.glob("run-*") if p not in recorded),
                     *(p for p in (self.root / "datasets").glob("*/*") if p not in recorded)]
        uploads = [p for p in models.glob("uploaded-*") if not p.name.endswith(".tmp")]
        removed = []
        for entries, age in ((temporary, grace_s), (uploads, upload_age_s)):
            for entry in entries:
                newest = _newest_mtime(entry)
                if newest is not None and newest < now - age:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry)
        return removed

    def _recorded_folders(self) -> set[Path]:
        with self._connect() as conn:
            rows = conn.execute("SELECT path FROM datasets UNION ALL SELECT artifact_dir FROM runs").fetchall()
        return {self._abs(r[0]) for r in rows if r[0]}

    def _rel(self, path: Path) -> str:
        """Paths inside the workspace are stored relative, so the folder can be moved."""
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def _abs(self, stored: str) -> Path:
        return (self.root / stored).resolve()

    # ---- the jail ----------------------------------------------------------------------------

    def resolve_inside(self, path: str | os.PathLike, what: str = "folder") -> Path:
        """`path` resolved (a relative one against the workspace root, symlinks followed), or a ConfigError
        when it lies outside the workspace and every folder of the operator's allow-list.

        Every path a form or a config accepts goes through here: a visitor must not make the server
        read or write anywhere else (another workspace, the home folder, system files).
        """
        text = str(path).strip()
        if not text or "\x00" in text:
            raise ConfigError(f"the {what} path is empty or invalid", hint="give a folder inside the workspace")
        longest = max(len(os.fsencode(part)) for part in Path(text).parts)
        if longest > MAX_NAME_BYTES:  # the system refuses it anyway, with an error naming the server's folders
            raise ConfigError(f"the {what} path has a name of {longest:,} bytes; names may have at most "
                              f"{MAX_NAME_BYTES}", hint="give a folder inside the workspace, e.g. models/run-00001-ease")
        candidate = Path(text).expanduser()
        resolved = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        roots = [self.root, *allowed_roots()]
        if any(resolved.is_relative_to(root) for root in roots):
            return resolved
        raise ConfigError(  # the workspace's own place on the server is not named: visitors read this
            f"the {what} {text[:200]!r} is outside the workspace",
            hint=f"use a path inside the workspace folder (relative paths start there, e.g. 'models/...'); "
                 f"an operator can allow more folders with {ALLOWED_ENV} (separated by '{os.pathsep}')")

    # ---- datasets ----------------------------------------------------------------------------

    def save_dataset(self, ds: Dataset, name: str | None = None, source_file: str = "", *,
                     overwrite: bool = False) -> DatasetRecord:
        """Save `ds` under `name` (default: a safe form of `ds.name`). A name already taken is a ConfigError
        unless `overwrite`: two sessions saving under one name must not both be told "saved".

        All or nothing: the files are written and synced in a temp folder, renamed into place, and only
        then recorded; if anything fails, the previous dataset of that name (if any) is untouched.
        """
        name = validate_name(name) if name is not None else safe_name(ds.name)
        if not overwrite:
            self._refuse_taken(name)
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        final = self.root / "datasets" / name / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        try:
            ds.save(tmp)
            fsync_tree(tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        record = DatasetRecord(name, source_file, ds.n_users, ds.n_items, ds.n_interactions, _now(), final)
        try:
            old = self._upsert_dataset(record, overwrite)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        if old is not None and old != final:
            shutil.rmtree(old, ignore_errors=True)
        return record

    def _refuse_taken(self, name: str) -> None:
        if self.get_dataset(name) is not None:
            raise ConfigError(f"a dataset named {name!r} already exists", file=str(self.root),
                              hint="choose another name, or choose to replace the existing dataset")

    def _upsert_dataset(self, rec: DatasetRecord, overwrite: bool) -> Path | None:
        """Point `rec.name` at its new folder; return the folder it pointed at before (if any). The check for
        a taken name repeats inside the write lock, so of two concurrent saves exactly one succeeds."""
        with self._connect(write=True) as conn:
            row = conn.execute("SELECT path FROM datasets WHERE name = ?", (rec.name,)).fetchone()
            if row is not None and not overwrite:
                raise ConfigError(f"a dataset named {rec.name!r} was saved by someone else a moment ago",
                                  file=str(self.root), hint="choose another name, or choose to replace it")
            conn.execute(
                "INSERT OR REPLACE INTO datasets (name, source_file, n_users, n_items, n_interactions, created_at, path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rec.name, rec.source_file, rec.n_users, rec.n_items, rec.n_interactions, rec.created_at,
                 self._rel(rec.path)),
            )
        return self._abs(row["path"]) if row else None

    def _dataset_record(self, row: sqlite3.Row) -> DatasetRecord:
        return DatasetRecord(row["name"], row["source_file"], row["n_users"], row["n_items"],
                             row["n_interactions"], row["created_at"], self._abs(row["path"]))

    def list_datasets(self) -> list[DatasetRecord]:
        """All saved datasets, newest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM datasets ORDER BY created_at DESC, rowid DESC").fetchall()
        return [self._dataset_record(r) for r in rows]

    def get_dataset(self, name: str) -> DatasetRecord | None:
        """The record of dataset `name`, or None if there is none."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return self._dataset_record(row) if row else None

    def load_dataset(self, name: str) -> Dataset:
        """Load a saved dataset by name; DataError if the name is unknown or its files are gone."""
        record = self._require_dataset(name)
        for _ in range(5):
            try:
                if not (record.path / "dataset.json").is_file():
                    raise DataError(f"the files of dataset {name!r} are missing", file=str(record.path),
                                    hint="delete it from the workspace and load its source file again")
                ds = Dataset.load(record.path)
                ds.name = name  # the workspace name is the identity pages and runs use
                return ds
            except DataError:
                # A concurrent overwrite deletes the old version while we read it: follow the new one.
                latest = self._require_dataset(name)
                if latest.path == record.path:
                    raise
                record = latest
        raise DataError(f"dataset {name!r} kept being replaced while loading", file=str(record.path),
                        hint="try again in a moment")

    def _require_dataset(self, name: str) -> DatasetRecord:
        record = self.get_dataset(name)
        if record is None:
            known = ", ".join(r.name for r in self.list_datasets()) or "none yet"
            raise ConfigError(f"no dataset named {name!r} in the workspace", file=str(self.root),
                            hint=f"pick one of the saved datasets ({known}) or load a file first")
        return record

    def delete_dataset(self, name: str) -> bool:
        """Forget dataset `name` and remove its files; True if it existed. Runs trained on it are kept."""
        with self._connect(write=True) as conn:
            row = conn.execute("SELECT path FROM datasets WHERE name = ?", (name,)).fetchone()
            conn.execute("DELETE FROM datasets WHERE name = ?", (name,))
        if row is None:
            return False
        version = self._abs(row["path"])
        if version.is_relative_to(self.root / "datasets") and version.parent != self.root / "datasets":
            shutil.rmtree(version, ignore_errors=True)
            try:  # only the version this row owned: a concurrent save may be writing a new one beside it
                version.parent.rmdir()
            except OSError:
                pass
        return True

    # ---- workspace-wide settings ---------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """A workspace-wide value (e.g. the last active dataset, so a new tab opens where colleagues left off)."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self._connect(write=True) as conn:
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value)))

    def ensure_demo(self) -> DatasetRecord:
        """The built-in demo's record, saving it on first use so the app opens on it with zero clicks, and
        again when the shipped files changed (an upgrade) so no page shows a stale copy."""
        record = self.get_dataset(DEMO_NAME)
        source = demo_source()
        if record is not None and record.source_file == source and (record.path / "dataset.json").is_file():
            return record
        return self.save_dataset(load_demo(), name=DEMO_NAME, source_file=source, overwrite=True)

    # ---- runs --------------------------------------------------------------------------------

    def models_dir(self) -> Path:
        """Folder under which training writes run artifacts."""
        path = self.root / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record_run(
        self,
        dataset: str,
        model: str,
        config: dict,
        metrics: dict,
        device: str,
        wall_s: float | None,
        artifact_dir: str | os.PathLike | None,
        split: str = "leave_one_out",
        status: str = "finished",
    ) -> int:
        """Store one run; returns its id. `config`/`metrics` must be JSON-serialisable."""
        with self._connect(write=True) as conn:
            return self._insert_run(conn, dataset=dataset, model=model, config=config, metrics=metrics,
                                    device=device, wall_s=wall_s, artifact_dir=artifact_dir, split=split,
                                    status=status)

    def _insert_run(self, conn: sqlite3.Connection, *, dataset: str, model: str, config: dict, metrics: dict,
                    device: str, wall_s: float | None, artifact_dir: str | os.PathLike | None,
                    split: str = "leave_one_out", status: str = "finished") -> int:
        now = _now()
        values = (dataset, model, json.dumps(config), json.dumps(metrics), device, wall_s,
                  self._rel(artifact_dir) if artifact_dir else "", split, status, now, now)
        cur = conn.execute(
            "INSERT INTO runs (dataset, model, config, metrics, device, wall_s, artifact_dir, split, status,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        return int(cur.lastrowid)

    def record_run_with_artifact(self, save: Callable[[Path], object], slug: str, **fields: Any) -> RunRecord:
        """Write a run's model files, then record the run and move the files into place in one transaction.

        A kill at any point leaves either no run (and a temp or unrecorded folder that `sweep` removes later)
        or a run whose files are complete: never a "finished" run without its model.
        """
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        try:
            save(tmp)
            fsync_tree(tmp)
            with self._connect(write=True) as conn:
                run_id = self._insert_run(conn, artifact_dir=None, **fields)
                folder = self.models_dir() / f"run-{run_id:05d}-{slug}"
                conn.execute("UPDATE runs SET artifact_dir = ? WHERE id = ?", (self._rel(folder), run_id))
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get_run(run_id)

    def update_run(self, run_id: int, **fields: object) -> RunRecord:
        """Change some fields of a run (e.g. status='finished', metrics={...}); returns the updated run."""
        unknown = set(fields) - set(_RUN_FIELDS)
        if unknown:
            raise ValueError(f"update_run: unknown field(s) {sorted(unknown)}; allowed: {list(_RUN_FIELDS)}")
        values = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
        if "artifact_dir" in values:
            values["artifact_dir"] = self._rel(values["artifact_dir"]) if values["artifact_dir"] else ""
        values["updated_at"] = _now()
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._connect(write=True) as conn:
            cur = conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
            if cur.rowcount == 0:
                raise ConfigError(f"no run with id {run_id} in the workspace", file=str(self.root))
        return self.get_run(run_id)

    def _run_record(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"], dataset=row["dataset"], model=row["model"], config=json.loads(row["config"]),
            metrics=json.loads(row["metrics"]), device=row["device"], wall_s=row["wall_s"],
            artifact_dir=self._abs(row["artifact_dir"]) if row["artifact_dir"] else None,
            split=row["split"], status=row["status"], created_at=row["created_at"], updated_at=row["updated_at"],
        )

    def list_runs(self, dataset: str | None = None) -> list[RunRecord]:
        """Runs, newest first; only those trained on `dataset` if given."""
        query, params = "SELECT * FROM runs", ()
        if dataset is not None:
            query, params = query + " WHERE dataset = ?", (dataset,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id DESC", params).fetchall()
        return [self._run_record(r) for r in rows]

    def get_run(self, run_id: int) -> RunRecord:
        """One run by id; DataError if there is none."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no run with id {run_id} in the workspace", file=str(self.root),
                            hint="pick a run from the list of trained models")
        return self._run_record(row)

    def delete_run(self, run_id: int) -> bool:
        """Forget a run and remove its artifact folder (only if it lies inside `models_dir()`)."""
        with self._connect(write=True) as conn:
            row = conn.execute("SELECT artifact_dir FROM runs WHERE id = ?", (run_id,)).fetchone()
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        if row is None:
            return False
        if row["artifact_dir"]:
            folder = self._abs(row["artifact_dir"])
            # Never delete anything but a run's own folder: not outside models/, not models/ itself.
            if folder.is_relative_to(self.root / "models") and folder != self.root / "models":
                shutil.rmtree(folder, ignore_errors=True)
        return True
