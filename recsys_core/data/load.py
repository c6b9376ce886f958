"""One call from an uploaded file to a `Dataset`: read, map columns, validate, filter, index.

`load_dataset` is what the Data page and the CLI call. Fatal problems raise `DataError`; every
non-fatal finding (what was detected, what was dropped and why) lands in the `LoadReport`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_core.data.dataset import (
    COUNT,
    ITEM,
    ORDER_FILE,
    ORDER_NONE,
    ORDER_TIMESTAMP,
    RATING,
    TIE_RULE,
    TIES_RANDOM,
    TIMESTAMP,
    USER,
    Dataset,
    build_dataset,
)
from recsys_core.data.filters import DUPLICATE_POLICIES, duplicated_rows, duplicates_to_drop, k_core
from recsys_core.data.items import items_from_raw, read_items
from recsys_core.data.mapping import ColumnMapping, infer_mapping
from recsys_core.data.read import RawTable, open_member, parse_blob
from recsys_core.data.source import DEFAULT_MAX_BYTES, Source, is_zip, load_blob, pick_member
from recsys_core.data.validate import to_interactions
from recsys_core.errors import DataError


@dataclass
class LoadOptions:
    """How to turn a file into a dataset. Defaults keep everything the file has."""

    # keep only rows whose rating (or count, for a file of counts) is >= this: implicit feedback
    implicit_threshold: float | None = None
    min_user_interactions: int = 1  # k-core: users with fewer are removed (iterated with items)
    min_item_interactions: int = 1
    duplicates: str = "keep_last"  # repeated (user, item): keep_last | keep_first | error | keep_all
    max_bytes: int = DEFAULT_MAX_BYTES
    min_eval_history: int = 3  # some user must have this many interactions, or no split can test anything
    # Without a timestamp column the order of a user's rows is unknown, unless the user declares that the
    # file lists them in time order (a file sorted by item id would otherwise look like a sequence).
    file_order_is_time: bool = False

    def check(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise DataError(f"unknown duplicate policy '{self.duplicates}'",
                            hint=f"use one of {', '.join(DUPLICATE_POLICIES)}")
        for name in ("min_user_interactions", "min_item_interactions", "max_bytes", "min_eval_history"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < (1 if name == "max_bytes" else 0):
                raise DataError(f"option {name}={value!r} must be a non-negative whole number",
                                hint="fix the value in the load options")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadReport:
    """What happened while loading, in plain words, plus the numbers behind it."""

    file: str
    detected: str = ""
    mapping: dict = field(default_factory=dict)
    rows_read: int = 0
    rows_kept: int = 0
    findings: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.findings.append(text)

    def lines(self) -> list[str]:
        mapped = ", ".join(f"{role}={col!r}" for role, col in self.mapping.items() if col is not None)
        return [self.detected, f"columns: {mapped}", f"rows read: {self.rows_read}, kept: {self.rows_kept}",
                *self.findings]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def load_dataset(source: Source, filename: str | None = None, *, mapping: ColumnMapping | Mapping | None = None,
                 items: Source | pd.DataFrame | None = None, items_filename: str | None = None,
                 options: LoadOptions | None = None, name: str | None = None,
                 parsed: RawTable | None = None) -> tuple[Dataset, LoadReport]:
    """Read `source` (path, or bytes + filename), validate, filter and index it into a Dataset.

    `parsed` is the table a preview already read from this same source: a big upload is parsed once."""
    options = options or LoadOptions()
    options.check()
    blob = load_blob(source, filename, max_bytes=options.max_bytes)
    inner = open_member(blob, "interactions", max_bytes=options.max_bytes)
    raw = parsed if parsed is not None else parse_blob(inner)
    report = LoadReport(file=raw.file, detected=raw.describe(), rows_read=raw.n_rows)
    if inner.member:
        report.add(f"read '{inner.member}' from the archive")
    mapping = _mapping(raw, mapping)
    report.mapping = mapping.as_dict()
    for reason in mapping.reasons:
        report.add(reason)
    frame, notes = to_interactions(raw, mapping)
    for note in notes:
        report.add(note)
    if parsed is None:  # the raw text columns are no longer needed: free them before indexing (not a slice,
        raw = replace(raw, frame=pd.DataFrame(columns=raw.frame.columns))  # which would keep their buffers)
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed pages until asked
    frame = _filter(raw, frame, options, report)
    meta = _metadata(blob, items, items_filename, options, report)
    opts = options.to_dict() | {"mapping": {k: None if v is None else str(v) for k, v in mapping.as_dict().items()},
                                 "order": _order(mapping, options)}
    ds = build_dataset(frame, name=name or _stem(raw.file), items=meta, source=raw.file, options=opts)
    report.rows_kept = ds.n_interactions
    _report_order(ds, report)
    _report_metadata(ds, meta, report)
    return ds, report


def _mapping(raw: RawTable, chosen: ColumnMapping | Mapping | None) -> ColumnMapping:
    """The mapping to load with: the chosen one, or the inferred one. When a page passes back exactly what was
    inferred, the reasons for it (a count told from a rating) still reach the report."""
    if chosen is None:
        return infer_mapping(raw.frame, file=raw.file)
    mapping = ColumnMapping.coerce(chosen)
    try:
        inferred = infer_mapping(raw.frame, file=raw.file)
    except DataError:
        return mapping
    return inferred if inferred == mapping else mapping


def _order(mapping: ColumnMapping, options: LoadOptions) -> str:
    if mapping.timestamp is not None:
        return ORDER_TIMESTAMP
    return ORDER_FILE if options.file_order_is_time else ORDER_NONE


def _report_order(ds: Dataset, report: LoadReport) -> None:
    """Say where "last" comes from, since splits and sequential models depend on it."""
    if ds.order == ORDER_NONE:
        report.add("no timestamp column: the order of each user's interactions is unknown, so leave-one-out holds "
                   "out a random interaction per user (seeded), the temporal split is unavailable and sequential "
                   "models (BERT4Rec, SASRec+, hybrid) are refused; if the file lists each user's interactions in "
                   "time order, declare file order as time")
    elif ds.order == ORDER_FILE:
        report.add("no timestamp column: file order is taken as time, as declared (the last row of a user is "
                   "their latest interaction)")
    elif ds.ties["rule"] == TIES_RANDOM:
        report.add(f"interactions of a user at the same timestamp are listed sorted by {ds.ties['sorted_by']} in the "
                   "file, an order that says nothing about time, so they are put in a seeded random order (seed "
                   f"{ds.ties['seed']}), as without timestamps; {ds.users_with_tied_last_two()} of {ds.n_users} users "
                   "have their last two interactions at the same timestamp, and which one is held out is that random "
                   f"pick (rule: {TIE_RULE})")
    elif (tied := ds.users_with_tied_last_two()):
        report.add(f"{tied} of {ds.n_users} users have their last two interactions at the same timestamp; "
                   f"{TIE_RULE}; here the file's order is kept, and it decides which one is held out")


def _stem(file: str) -> str:
    return Path(PurePosixPath(file).name).stem or "dataset"


def _filter(raw: RawTable, frame: pd.DataFrame, options: LoadOptions, report: LoadReport) -> pd.DataFrame:
    """De-duplicate, threshold and k-core; returns the kept rows (original order)."""
    users, items = _codes(frame[USER]), _codes(frame[ITEM])
    ts = frame[TIMESTAMP].to_numpy() if TIMESTAMP in frame.columns else None
    keep = _dedupe(raw, frame, users, items, ts, options.duplicates, report)
    if options.implicit_threshold is not None:
        column = next((c for c in (RATING, COUNT) if c in frame.columns), None)
        if column is None:
            raise DataError("an implicit-feedback threshold needs a rating or count column, and none is mapped",
                            file=raw.file, hint="map the rating or count column, or clear the threshold")
        below = keep & (frame[column].to_numpy() < options.implicit_threshold)
        keep &= ~below
        report.add(f"implicit threshold: removed {int(below.sum())} rows with {column} < "
                   f"{options.implicit_threshold:g}")
    before = int(keep.sum())
    keep, rounds = k_core(users, items, keep, options.min_user_interactions, options.min_item_interactions)
    if rounds:
        report.add(f"k-core (users >= {options.min_user_interactions}, items >= {options.min_item_interactions}): "
                   f"removed {before - int(keep.sum())} rows in {rounds} round(s)")
    _check_left(raw, users[keep], items[keep], options, report)
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def _codes(ids: pd.Series) -> np.ndarray:
    """Integer codes of an id column: the Categorical's own when `to_interactions` made one (no re-hashing)."""
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return ids.cat.codes.to_numpy()
    return pd.factorize(ids)[0]


def _dedupe(raw: RawTable, frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, ts: np.ndarray | None, policy: str,
            report: LoadReport) -> np.ndarray:
    if policy == "error":
        dup = duplicated_rows(users, items)
        if dup.any():
            rows = np.flatnonzero(dup)[:5]
            lines = raw.line_of(rows)
            examples = [f"{raw.row_word} {ln}: user {frame[USER].iat[r]!r}, item {frame[ITEM].iat[r]!r}"
                        for ln, r in zip(lines, rows)]
            raise DataError(f"{int(dup.sum())} rows repeat a (user, item) pair that occurs elsewhere in the file",
                            file=raw.file, line=int(lines[0]), examples=examples,
                            hint="remove the repeats, or choose the duplicate policy keep_last, keep_first or keep_all")
        return np.ones(len(users), dtype=bool)
    drop = duplicates_to_drop(users, items, ts, policy)
    if policy == "keep_all":
        n_rep = int(duplicated_rows(users, items).sum()) if len(users) else 0
        if n_rep:
            report.add(f"kept {n_rep} rows that repeat a (user, item) pair (policy keep_all)")
    elif drop.any():
        which = "latest" if policy == "keep_last" else "earliest"
        report.add(f"dropped {int(drop.sum())} duplicate (user, item) rows, keeping the {which} of each pair")
    return ~drop


def _check_left(raw: RawTable, users: np.ndarray, items: np.ndarray, options: LoadOptions,
                report: LoadReport) -> None:
    """Refuse data too small to train on or to split, saying which filter caused it."""
    what = "; ".join(f for f in report.findings if f.startswith(("implicit threshold", "k-core", "dropped")))
    if len(users) == 0:
        raise DataError("no interactions are left after filtering" + (f" ({what})" if what else ""), file=raw.file,
                        hint="lower the implicit threshold or the k-core minimums")
    n_items = int(np.count_nonzero(np.bincount(items)))
    per_user = np.bincount(users)
    evaluable = int((per_user >= options.min_eval_history).sum())
    if n_items < 2:
        raise DataError(f"only {n_items} distinct item is left, so there is nothing to recommend", file=raw.file,
                        hint="use a file with more items, or lower the filters")
    if evaluable == 0:
        raise DataError(
            f"every user has fewer than {options.min_eval_history} interactions after filtering, so no split can "
            "hold out test and validation items (the most any user has is " f"{int(per_user.max())})",
            file=raw.file, hint="load more interactions per user, or lower the k-core minimums")
    share = evaluable / max(int((per_user > 0).sum()), 1)
    if share < 0.5:
        report.add(f"only {evaluable} users ({share:.0%}) have >= {options.min_eval_history} interactions; "
                   "the others are used for training only")


def _metadata(blob, items, items_filename, options: LoadOptions, report: LoadReport) -> pd.DataFrame | None:
    if isinstance(items, pd.DataFrame):
        if "item_id" not in items.columns:
            raise DataError("the item metadata frame has no 'item_id' column", hint="rename its id column to item_id")
        return items
    if items is not None:
        meta = read_items(items, items_filename, max_bytes=options.max_bytes)
        report.add(f"item metadata: {len(meta)} items from '{items_filename or _name_of(items)}'")
        return meta
    if is_zip(blob):
        member = pick_member(blob, "items", max_bytes=options.max_bytes, required=False)
        if member is None:
            return None
        try:  # metadata found by guessing must not sink a load whose ratings are fine
            meta = items_from_raw(parse_blob(member))
        except DataError as err:
            report.add(f"item metadata in archive member '{member.member}' was skipped: {err.message}")
            return None
        report.add(f"item metadata: {len(meta)} items from archive member '{member.member}'")
        return meta
    return None


def _name_of(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "uploaded file"
    return str(getattr(source, "name", source))


def _report_metadata(ds: Dataset, meta: pd.DataFrame | None, report: LoadReport) -> None:
    if meta is None:
        return
    known = pd.Index(meta["item_id"].astype(str))
    missing = int((~pd.Index(ds.item_ids).isin(known)).sum())
    if missing:
        examples = ", ".join(map(str, ds.item_ids[~pd.Index(ds.item_ids).isin(known)][:5]))
        report.add(f"{missing} of {ds.n_items} items have no metadata (e.g. {examples}); they show their id as title")
