"""Where models differ: per-user metrics broken down by history length and by target-item popularity.

A leaderboard mean hides that sequence models and text towers win on different users; the
segments here are the two axes users ask about (short vs long histories, head vs tail items).

A run stores its per-user metrics at evaluation time (`PER_USER_FILE` in the run's folder, written with
the model files, so it appears complete or not at all): the Compare page reads them instead of loading
and re-scoring every model. Each row carries `EVALUATED_ON`, a digest of the evaluation set and training
popularity it was scored on, so a table is reused only for the same data: a dataset saved again with other
interactions, or a file from before the digest, is re-scored once (`training/per_user.py`, the use case).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys_core.data.splits import EvalSet, Split
from recsys_core.evaluation.metrics import evaluate, popularity_percentile, train_popularity

if TYPE_CHECKING:  # evaluation ranks any scorer; models import it for validation
    from recsys_core.models.base import Recommender
    from recsys_core.progress import Progress

HISTORY_EDGES = (0, 5, 20, 50, np.inf)  # history-length buckets: 1-5, 6-20, 21-50, 51+
POPULARITY_EDGES = (0.0, 0.5, 0.9, 1.01)  # target popularity percentile: tail, mid, head (top 10%)
POPULARITY_LABELS = ("tail (bottom 50%)", "mid (50-90%)", "head (top 10%)")
PER_USER_FILE = "per_user.npy"  # a structured array: one record per evaluated user, numbers only
EVALUATED_ON = "evaluated_on"  # column: `evaluation_key` of the data a row was scored on (the same on every row)


def history_segment(lengths: np.ndarray) -> pd.Categorical:
    labels = [f"{int(lo) + 1}-{int(hi)}" if np.isfinite(hi) else f"{int(lo) + 1}+"
              for lo, hi in pairwise(HISTORY_EDGES)]
    return pd.cut(lengths, bins=list(HISTORY_EDGES), labels=labels, right=True)


def popularity_segment(percentiles: np.ndarray) -> pd.Categorical:
    return pd.cut(percentiles, bins=list(POPULARITY_EDGES), labels=list(POPULARITY_LABELS), right=False)


def per_user_metrics(model: Recommender, split: Split, evalset: EvalSet | None = None,
                     progress: Progress | None = None) -> pd.DataFrame | None:
    """One row per evaluated user with its metrics and both segment labels (scores the model); None when
    `progress` was cancelled (its events count the users scored)."""
    evalset = evalset or split.test
    popularity = train_popularity(split)
    result = evaluate(model, evalset, item_popularity=popularity, per_user=True, progress=progress)
    if result.get("cancelled"):
        return None
    return with_segments(per_user_table(result["per_user"], evalset, popularity))


def evaluation_key(evalset: EvalSet, popularity: np.ndarray) -> int:
    """64-bit digest of everything a per-user table depends on besides the model: the evaluated users, the
    history each is scored from (its items are also the ones excluded), the held-out items and the training
    popularity (`target_pct`). Equal keys: re-scoring the same model gives the same table."""
    digest = hashlib.sha256()
    for part in (evalset.users, *_ragged(evalset.histories), *_ragged(evalset.targets), popularity):
        array = np.ascontiguousarray(np.asarray(part, dtype=np.int64))
        digest.update(len(array).to_bytes(8, "little"))  # a boundary: no two part lists hash alike by shifting
        digest.update(array.tobytes())
    return int.from_bytes(digest.digest()[:8], "little")


def _ragged(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, concatenation) of a list of 1-D arrays."""
    lengths = np.fromiter((np.size(r) for r in rows), np.int64, len(rows))
    flat = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]) if rows else np.zeros(0, np.int64)
    return lengths, flat


def per_user_table(frame: pd.DataFrame, evalset: EvalSet, popularity: np.ndarray) -> pd.DataFrame:
    """`evaluate(..., per_user=True)["per_user"]` plus `target_pct`, the training-popularity percentile of
    each user's (first) held-out item: all a breakdown needs, without the split or the model; and
    `EVALUATED_ON`, the data's `evaluation_key`, so a stored table is reused only for the same data."""
    pct = popularity_percentile(popularity)
    everyone = np.asarray(evalset.users)
    order = np.argsort(everyone, kind="stable")
    # Where each evaluated user sits in the evaluation set: a sampled evaluation covers some users only.
    rows = order[np.searchsorted(everyone[order], np.asarray(frame["user"]))]
    first = np.fromiter((int(np.asarray(evalset.targets[r]).reshape(-1)[0]) for r in rows), np.int64, len(rows))
    return frame.assign(target_pct=pct[first], **{EVALUATED_ON: np.uint64(evaluation_key(evalset, popularity))})


def with_segments(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its "history segment" and "target popularity" labels."""
    return table.assign(**{"history segment": history_segment(table["history_len"].to_numpy()),
                           "target popularity": popularity_segment(table["target_pct"].to_numpy())})


def save_per_user(folder: str | Path, table: pd.DataFrame) -> Path:
    """Write a run's per-user table into its folder; atomic (temp file, fsync, rename), so a reader sees the
    old file or the new one, never a torn one. No pickle. An OSError (a read-only folder, a full disk) leaves
    no temp file behind."""
    numeric = table[[c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]]
    path = Path(folder) / PER_USER_FILE
    tmp = path.with_name(f".{PER_USER_FILE}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, numeric.to_records(index=False), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_per_user(folder: str | Path, key: int | None = None) -> pd.DataFrame | None:
    """A run's stored per-user metrics with segment labels, or None when the run has none (or it is damaged);
    with `key`, also None unless the table was scored on the data of that `evaluation_key`."""
    path = Path(folder) / PER_USER_FILE
    try:
        records = np.load(path, allow_pickle=False)
        table = pd.DataFrame.from_records(records)
    except (OSError, ValueError, TypeError, EOFError):  # missing, not a .npy, pickled, not a record array
        return None
    if not {"user", "history_len", "target_pct"} <= set(table.columns):
        return None
    if key is not None and not (EVALUATED_ON in table.columns and len(table)
                                and (table[EVALUATED_ON].to_numpy() == np.uint64(key)).all()):
        return None
    return with_segments(table)


def segment_breakdown(frames: Mapping[str, pd.DataFrame], metric: str = "ndcg@10") -> pd.DataFrame:
    """Long table: model, segment kind, segment, users, mean metric — ready for a grouped bar chart."""
    rows = []
    for name, frame in frames.items():
        for kind in ("history segment", "target popularity"):
            grouped = frame.groupby(kind, observed=False)[metric]
            for segment, values in grouped:
                rows.append({"model": name, "kind": kind, "segment": str(segment),
                             "users": int(values.size), metric: float(values.mean()) if values.size else np.nan})
    return pd.DataFrame(rows)
