"""Export recommendations (one user or every user) as CSV or Parquet.

All users are scored in batches through `recommend_many` (one `score` call and one top-k per
batch). CSV cells that a spreadsheet would run as a formula are neutralised: a text cell starting
with =, +, -, @, tab or carriage return gets a leading apostrophe (OWASP "CSV injection"); numbers
stay numbers. Parquet keeps the text as is, since no spreadsheet evaluates it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.data.dataset import Dataset
from recsys_core.errors import ConfigError, DataError
from recsys_core.models.base import Recommender
from recsys_core.progress import Progress
from recsys_core.recommend.topk import item_table, recommend_many

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMATS = ("csv", "parquet")
# Every export of recommendations, one user's or everyone's, has exactly these columns.
EXPORT_COLUMNS = ("user_id", "rank", "item_id", "title", "score", "fallback")


def recommendations_for_users(model: Recommender, ds: Dataset, k: int = 10, users: Sequence[int] | None = None, *,
                              allowed: np.ndarray | None = None, batch_size: int = 1024,
                              progress: Progress | None = None) -> pd.DataFrame:
    """Long table of top-k per user (all users by default), each user's seen items excluded.

    Columns: user_id, rank, item_id, title, score, fallback (popularity used: the model had no
    signal for that history). Users with fewer than k candidates get fewer rows.
    """
    users = np.arange(ds.n_users) if users is None else np.asarray(users, dtype=np.int64)
    if len(users) and (users.min() < 0 or users.max() >= ds.n_users):
        raise DataError(f"user index outside the {ds.n_users} users of {ds.name!r}")
    histories = [ds.history(int(u)) for u in users]
    top = recommend_many(model, histories, k, allowed=allowed, popularity=ds.item_popularity,
                         batch_size=batch_size, progress=progress)
    real = top.items >= 0
    rows = np.repeat(np.arange(len(users)), real.sum(axis=1))
    meta = item_table(top.items[real], ds.items, ds.item_ids)
    return pd.DataFrame({
        "user_id": np.asarray(ds.user_ids, dtype=object)[users[rows]].astype(str),
        "rank": np.nonzero(real)[1] + 1,
        "item_id": meta["item_id"].to_numpy(),
        "title": meta["title"].to_numpy(),
        "score": top.scores[real],
        "fallback": top.fallback[rows],
    })


def export_table(recs: pd.DataFrame, user_id: str) -> pd.DataFrame:
    """One user's `topk.recommend` frame in the columns of `recommendations_for_users` (`EXPORT_COLUMNS`)."""
    return pd.DataFrame({
        "user_id": np.full(len(recs), str(user_id), dtype=object),
        "rank": recs["rank"].to_numpy(),
        "item_id": recs["item_id"].astype(str).to_numpy(),
        "title": recs["title"].to_numpy(),
        "score": recs["score"].to_numpy(),
        "fallback": np.full(len(recs), bool(recs.attrs.get("fallback", False))),
    })


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot start a spreadsheet formula (leading apostrophe added)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if not (series.dtype == object or pd.api.types.is_string_dtype(series)):
            continue  # numbers, booleans and dates stay typed
        values = series.astype(object).to_numpy(copy=True)
        is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
        if not is_text.any():
            continue
        risky = np.zeros(len(values), dtype=bool)
        risky[is_text] = pd.Series(values[is_text], dtype=object).str.startswith(FORMULA_STARTS).to_numpy(dtype=bool)
        if risky.any():
            values[risky] = ["'" + v for v in values[risky]]
            out[column] = values
    return out


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV (with BOM, so spreadsheets read accents right), formulas neutralised.

    RFC 4180 CRLF line ends also make the writer quote any cell holding a bare CR, which a "\n"
    terminator would leave unquoted and so split the row in two on reading.
    """
    return neutralise_formulas(frame).to_csv(index=False, lineterminator="\r\n").encode("utf-8-sig")


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    _for_parquet(frame).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _for_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    # Timezone-aware dates and nullable ints round-trip; object columns of mixed types would not.
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].astype(str)
    return out


def export_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """`frame` as 'csv' or 'parquet' bytes (for a download button)."""
    if fmt == "csv":
        return to_csv_bytes(frame)
    if fmt == "parquet":
        return to_parquet_bytes(frame)
    raise ConfigError(f"unknown export format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")


def write_export(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `frame` to `path`, the format taken from its suffix (.csv or .parquet)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    data = export_bytes(frame, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # never leave a half-written export under the final name
    return path


def read_export(path_or_bytes: str | Path | bytes, fmt: str | None = None) -> pd.DataFrame:
    """Read an export back (for checks); CSV apostrophes are left in place, as a spreadsheet shows them."""
    if isinstance(path_or_bytes, bytes):
        source: io.BytesIO | Path = io.BytesIO(path_or_bytes)
    else:
        source = Path(path_or_bytes)
        fmt = fmt or source.suffix.lower().lstrip(".")
    if fmt == "csv":
        return pd.read_csv(source, encoding="utf-8-sig", dtype={"user_id": str, "item_id": str})
    if fmt == "parquet":
        return pd.read_parquet(source)
    raise ConfigError(f"unknown export format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")


def export_work(model: Recommender, ds: Dataset, k: int = 10, *, allowed: np.ndarray | None = None):
    """The work of a workspace job (`background.WorkspaceJob`) preparing the all-users export: its result
    is the table (stored as Parquet in the workspace), or None when cancelled."""

    def work(progress: Progress) -> dict | None:
        def relay(event) -> None:  # progress in users, and the job's cancel flag read after every batch
            progress.update(event.step, event.total, message=f"scored {event.step:,} of {event.total:,} users")
            if progress.cancelled:
                inner.cancel()

        inner = Progress(callback=relay)
        table = recommendations_for_users(model, ds, k, allowed=allowed, progress=inner)
        return None if progress.cancelled else {"table": table}

    return work
