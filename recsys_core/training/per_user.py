"""Per-user evaluation of a saved run: the use case behind Compare's "where each model wins" (and any client's).

A run stores its per-user test metrics when it is evaluated (`evaluation/compare.py`); this returns them when
they were scored on the data the caller holds, and otherwise (a run recorded before they were stored, or a
dataset saved again with other interactions) loads the model, re-scores it once, and stores the table in the
run's folder atomically for every later caller. A read-only folder still gets the answer: it is then kept in
this process's memory instead. It lives here, not in `evaluation/`, because it loads a model and builds a split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.errors import RecsysError
from recsys_core.evaluation.compare import evaluation_key, load_per_user, per_user_metrics, save_per_user
from recsys_core.evaluation.metrics import train_popularity
from recsys_core.models.base import load_model
from recsys_core.progress import Progress
from recsys_core.training.experiment import make_split

log = logging.getLogger(__name__)

# Re-scored tables by (run folder, evaluation key): two tabs asking for the same older run score it once, and a
# folder that cannot be written is not re-scored on every call.
_RESCORED: KeyedCache[pd.DataFrame] = KeyedCache(max_entries=32)


class _Cancelled(RecsysError):
    """The caller's Progress was cancelled while scoring: nothing is cached or stored."""


def per_user_results(run_folder: str | Path, ds: Dataset, split_kind: str = "leave_one_out",
                     progress: Progress | None = None) -> pd.DataFrame | None:
    """The run's test metrics per user (one row per evaluated user: metrics, history length, the held-out item's
    popularity percentile, both segment labels) on `ds` split by `split_kind`; None when `progress` was
    cancelled. Stored metrics are read when they were scored on exactly this data; otherwise the model is
    scored once (progress counts users; Cancel stops between batches and stores nothing) and the table saved.
    ModelError when the folder holds no loadable model or the model does not fit `ds`'s catalogue."""
    folder = Path(run_folder)
    split = make_split(ds, split_kind)
    key = evaluation_key(split.test, train_popularity(split))
    stored = load_per_user(folder, key)
    if stored is not None:
        return stored
    try:
        table = _RESCORED.get_or_compute((str(folder.resolve()), key), lambda: _rescore(folder, ds, split, progress))
    except _Cancelled:
        return None
    return table.copy()  # the cached frame is shared: a caller's edits must not reach the next caller


def _rescore(folder: Path, ds: Dataset, split: Split, progress: Progress | None) -> pd.DataFrame:
    if progress is not None:
        progress.update(0, len(split.test), message=f"loading the model to score {len(split.test):,} users")
    _stop_if_cancelled(progress)
    model = load_model(folder)
    model.check_fits(ds)
    _stop_if_cancelled(progress)  # Cancel pressed while the model loaded: no scoring at all
    table = per_user_metrics(model, split, progress=progress)
    if table is None:
        raise _Cancelled("per-user evaluation cancelled")
    try:
        save_per_user(folder, table)
    except OSError as err:  # a read-only workspace still gets the answer, kept in memory instead
        log.info("per-user metrics of %s not stored (%s); kept in memory", folder.name, type(err).__name__)
    return table


def _stop_if_cancelled(progress: Progress | None) -> None:
    if progress is not None and progress.cancelled:
        raise _Cancelled("per-user evaluation cancelled")
