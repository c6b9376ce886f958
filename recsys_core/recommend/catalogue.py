"""What every client shows about a dataset's items, computed once per dataset version, and which run serves it.

A `Catalogue` is plain data: item ids, one label per item (the label every page, the CLI and the API show),
popularity, the attribute columns and the popularity order. `catalogue_of(ds)` builds it once per dataset version
(the one cache helper, `recsys_core.cache`), so a page rerun, a CLI call and every API request read the same
object. `best_run` is the one answer to "which finished run of this dataset is the model to use".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.item_schema import GENRES, ITEM_ID, TITLE, YEAR, attribute_values
from recsys_core.workspace.registry import RunRecord, Workspace

RANK_METRIC = "ndcg@10"  # how runs of one dataset are ranked (the Compare page's headline metric)
_CATALOGUES: KeyedCache[Catalogue] = KeyedCache(max_entries=16)


@dataclass(frozen=True, eq=False)
class Catalogue:
    """A dataset version's items as every client shows them (indices are the dataset's item indices)."""

    dataset: str
    version: str
    item_ids: np.ndarray  # str [n_items]
    labels: np.ndarray  # str [n_items]: "Title (year)", or "item <id>" without a title
    popularity: np.ndarray  # int [n_items]: interactions per item
    items: pd.DataFrame = field(repr=False)  # the item schema columns (item_id, title, year, genres, ...)
    index: dict[str, int] = field(repr=False)  # item id -> item index: the dataset's own map, not a copy

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def by_popularity(self) -> np.ndarray:
        """Item indices, most interacted-with first (ties by index)."""
        return np.argsort(-self.popularity, kind="stable")

    @cached_property
    def genres(self) -> list[str]:
        """The distinct values of the genres column (empty when the data has none)."""
        return attribute_values(self.items, GENRES)

    @cached_property
    def year_range(self) -> tuple[int, int] | None:
        """(oldest, newest) year when items carry at least two different years, else None."""
        known = self.items[YEAR].dropna() if YEAR in self.items.columns else pd.Series(dtype=float)
        return (int(known.min()), int(known.max())) if len(known) and known.min() < known.max() else None

    def item(self, index: int) -> dict:
        """One item as plain data: item_id, label, title, popularity and every attribute the item has."""
        row = self.items.iloc[int(index)]
        out = {"item_id": str(self.item_ids[index]), "label": str(self.labels[index]),
               "title": str(row[TITLE]) if row[TITLE] else str(self.item_ids[index]),
               "popularity": int(self.popularity[index])}
        for column, value in row.items():
            if column in (ITEM_ID, TITLE) or value is None or value is pd.NA or value == "":
                continue
            if isinstance(value, float) and np.isnan(value):
                continue
            out[str(column)] = value.item() if isinstance(value, np.generic) else value
        return out


def dataset_version(ds: Dataset) -> str:
    """What a catalogue depends on: the dataset's name, its item ids and its interactions (count and source)."""
    return f"{ds.name}|{ds.catalogue_digest}|{ds.n_interactions}|{ds.source}"


def catalogue_of(ds: Dataset) -> Catalogue:
    """The dataset's `Catalogue`, built once per dataset version and shared by every caller."""
    version = dataset_version(ds)
    return _CATALOGUES.get_or_compute(version, lambda: Catalogue(
        dataset=ds.name, version=version, item_ids=np.asarray(ds.item_ids).astype(str),
        labels=np.asarray(ds.labels).astype(str), popularity=np.asarray(ds.item_popularity), items=ds.items,
        index=ds.item_index))


def ranked_runs(ws: Workspace, dataset: str) -> list[RunRecord]:
    """The finished runs of `dataset` with saved files and metrics, best `RANK_METRIC` first (newest on ties).

    Only finished runs compete: a cancelled or never-improving run is kept and labelled, never "the best".
    """
    runs = [r for r in ws.list_runs(dataset=dataset) if r.artifact_dir and r.metrics and r.status == "finished"]
    return sorted(runs, key=lambda r: (-float(r.metrics.get(RANK_METRIC, 0.0) or 0.0), -r.id))


def best_run(ws: Workspace, dataset: str, fits=None) -> RunRecord | None:
    """The best finished run of `dataset` whose files exist (and, given `fits(folder) -> bool`, that fits)."""
    for run in ranked_runs(ws, dataset):
        if not Path(run.artifact_dir).is_dir():
            continue
        if fits is None or fits(run.artifact_dir):
            return run
    return None
