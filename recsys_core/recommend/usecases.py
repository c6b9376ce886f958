"""The recommendation use cases every client calls: the Recommend page, `recsys recommend` and `recsys serve`.

Plain data in (`Query`: a user id or a history of item ids, k, filters, exclude-seen, what to do with unknown
ids), plain data out (`Recommendations`, `to_dict` for JSON). `recommend_batch` scores many queries in one
forward pass, so a server can coalesce concurrent requests and still answer each exactly as `recommend_for`
answers it alone: one path, one answer, whichever client asks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.errors import ConfigError, DataError, ModelError, ResourceError
from recsys_core.evaluation.metrics import top_k
from recsys_core.models.base import Recommender
from recsys_core.recommend.catalogue import Catalogue, catalogue_of
from recsys_core.recommend.topk import (
    FALLBACK_NOTE,
    Filters,
    candidate_mask,
    item_columns,
    seen_mask,
    similar_items,
    with_fallback,
)

UNKNOWN_ERROR, UNKNOWN_IGNORE = "error", "ignore"
_MASKS: KeyedCache[np.ndarray | None] = KeyedCache(max_entries=64)
_RESULTS: KeyedCache[Recommendations] = KeyedCache(max_entries=1024)


class UnknownIdError(DataError):
    """A user or item id that the dataset does not hold (an API answers 404 for it)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one query: a server lowers them to what it is willing to compute per request."""

    max_k: int = 1000
    max_history: int = 100_000


@dataclass(frozen=True)
class Query:
    """One recommendation request. `history` is item ids, oldest first; `any_of` is (column, values) pairs (an
    item passes when its '|'-joined column holds one of them); `between` is (column, low, high), inclusive, either
    end None; `hide_popular_top` drops that share of the most popular items; `unknown_items` is 'error' (name them)
    or 'ignore' (score the rest)."""

    user: str | None = None
    history: tuple[str, ...] | None = None
    k: int = 10
    any_of: tuple[tuple[str, tuple[str, ...]], ...] = ()
    between: tuple[tuple[str, float | None, float | None], ...] = ()
    hide_popular_top: float = 0.0
    exclude_seen: bool = True
    unknown_items: str = UNKNOWN_ERROR

    @classmethod
    def of(cls, *, user: str | None = None, history: Sequence[str] | None = None, k: int = 10,
           any_of: Mapping[str, Sequence[str]] | None = None,
           between: Mapping[str, Sequence[float | None]] | None = None, **rest) -> Query:
        """A query from plain containers (dicts and lists, as JSON or a form gives them)."""
        wanted = tuple(sorted((str(c), tuple(str(v) for v in vals)) for c, vals in (any_of or {}).items() if vals))
        ranges = []
        for column, bounds in (between or {}).items():
            low, high = (list(bounds) + [None, None])[:2]
            if low is not None or high is not None:
                ranges.append((str(column), None if low is None else float(low), None if high is None else float(high)))
        return cls(user=None if user is None else str(user),
                   history=None if history is None else tuple(str(i) for i in history), k=int(k),
                   any_of=wanted, between=tuple(sorted(ranges)), **rest)

    def filters(self) -> Filters:
        return Filters(any_of=dict(self.any_of), between={c: (lo, hi) for c, lo, hi in self.between})

    def as_request(self) -> dict:
        """The query as the HTTP API's JSON body (`POST /v1/recommend`), defaults left out."""
        body: dict = {"user": self.user} if self.user is not None else {"history": list(self.history or ())}
        body["k"] = self.k
        filters = {}
        if self.any_of:
            filters["any_of"] = {c: list(v) for c, v in self.any_of}
        if self.between:
            filters["between"] = {c: [lo, hi] for c, lo, hi in self.between}
        if filters:
            body["filters"] = filters
        if self.hide_popular_top:
            body["hide_popular_top"] = self.hide_popular_top
        if not self.exclude_seen:
            body["exclude_seen"] = False
        if self.unknown_items != UNKNOWN_ERROR:
            body["unknown_items"] = self.unknown_items
        return body


@dataclass(frozen=True, eq=False)
class Recommendations:
    """The answer to one `Query`: item indices best first, their scores, the history scored, and how."""

    items: np.ndarray
    scores: np.ndarray
    history: np.ndarray
    fallback: bool
    model: str  # the model's identity (family and weights version)
    family: str
    user: str | None = None
    ignored: tuple[str, ...] = ()
    candidates: int = 0  # items the filters left
    contributors: dict | None = field(default=None)

    @property
    def note(self) -> str:
        return FALLBACK_NOTE if self.fallback else ""

    def frame(self, catalogue: Catalogue) -> pd.DataFrame:
        """rank, item, item_id, score, title, every metadata column, popularity: one row per recommendation."""
        columns = item_columns(self.items, catalogue.items, catalogue.item_ids, catalogue.popularity)
        first = {"rank": np.arange(1, len(self.items) + 1), "item": columns.pop("item"),
                 "item_id": columns.pop("item_id"), "score": self.scores}
        frame = pd.DataFrame({**first, **columns})
        frame.attrs["fallback"], frame.attrs["note"] = self.fallback, self.note
        return frame

    def to_dict(self, catalogue: Catalogue) -> dict:
        """Plain JSON-ready data: the model, the user and history scored, and one row per recommendation."""
        ids, labels, pop = catalogue.item_ids, catalogue.labels, catalogue.popularity
        rows = [{"rank": r, "item_id": str(ids[i]), "label": str(labels[i]), "score": float(s),
                 "popularity": int(pop[i])} for r, (i, s) in enumerate(zip(self.items.tolist(), self.scores.tolist(),
                                                                             strict=True), 1)]
        out = {"model": self.family, "model_version": self.model, "user": self.user,
               "history": [str(ids[i]) for i in self.history.tolist()], "fallback": self.fallback,
               "note": self.note, "ignored": list(self.ignored), "candidates": self.candidates,
               "recommendations": rows}
        if self.contributors is not None:
            out["explain"] = self.contributors
        return out


@dataclass(frozen=True)
class _Resolved:
    history: np.ndarray
    ignored: tuple[str, ...]
    allowed: np.ndarray | None


def history_of(ds: Dataset, catalogue: Catalogue, query: Query, limits: Limits = Limits()) -> tuple[np.ndarray,
                                                                                                    tuple[str, ...]]:
    """The item indices a query scores (a user's history, or its own item ids) and the ids it ignored."""
    if (query.user is None) == (query.history is None):
        raise ConfigError("give either a user id or a history of item ids, not both or neither", setting="user",
                          hint='{"user": "42"} or {"history": ["item-a", "item-b"]}')
    if query.user is not None:
        row = ds.user_index.get(query.user)
        if row is None:
            raise UnknownIdError(f"user {query.user!r} is not in dataset {ds.name!r}", setting="user",
                                 hint="pass an id from the user column, or send the user's history instead")
        return np.asarray(ds.history(row), dtype=np.int64), ()
    if len(query.history) > limits.max_history:
        raise ResourceError(f"the history holds {len(query.history):,} items; at most {limits.max_history:,} are "
                            "scored per request", setting="history", hint="send the most recent items only")
    if query.unknown_items not in (UNKNOWN_ERROR, UNKNOWN_IGNORE):
        raise ConfigError(f"unknown_items must be 'error' or 'ignore', got {query.unknown_items!r}",
                          setting="unknown_items", hint="use 'ignore' to score the known items only")
    index = catalogue.index
    known = [index.get(i) for i in query.history]
    unknown = tuple(dict.fromkeys(i for i, k in zip(query.history, known, strict=True) if k is None))
    if unknown and query.unknown_items == UNKNOWN_ERROR:
        raise UnknownIdError(f"{len(unknown)} item id(s) of the history are not in dataset {ds.name!r}: "
                             f"{', '.join(map(repr, unknown[:10]))}", setting="history",
                             hint="pass ids from the item column, or set unknown_items to 'ignore' to score the rest",
                             examples=list(unknown[:5]))
    return np.asarray([k for k in known if k is not None], dtype=np.int64), unknown


def allowed_items(catalogue: Catalogue, query: Query) -> np.ndarray | None:
    """Bool [n_items] of the items the query's filters leave (None: all), computed once per filter setting."""
    if not query.any_of and not query.between and not query.hide_popular_top:
        return None
    key = (catalogue.version, query.any_of, query.between, query.hide_popular_top)
    return _MASKS.get_or_compute(key, lambda: candidate_mask(
        catalogue.n_items, items=catalogue.items, filters=query.filters(), popularity=catalogue.popularity,
        hide_popular_top=query.hide_popular_top))


def _resolve(ds: Dataset, catalogue: Catalogue, query: Query, limits: Limits) -> _Resolved:
    if not 1 <= query.k <= limits.max_k:
        raise ConfigError(f"k must be between 1 and {limits.max_k}, got {query.k}", setting="k",
                          hint=f"ask for at most {limits.max_k} items")
    history, ignored = history_of(ds, catalogue, query, limits)
    return _Resolved(history, ignored, allowed_items(catalogue, query))


def check_query(ds: Dataset, query: Query, limits: Limits = Limits()) -> None:
    """Raise what `recommend_batch` would raise for this query, scoring nothing: a server checks each request
    before it joins a batch, so one bad request never fails the others."""
    _resolve(ds, catalogue_of(ds), query, limits)


def recommend_batch(model: Recommender, ds: Dataset, queries: Sequence[Query], limits: Limits = Limits()
                    ) -> list[Recommendations]:
    """Top-k for every query with one `score` call: a query answers the same alone or in a batch.

    Seen items are excluded when `exclude_seen`; a history the model scores flat (e.g. empty for EASE or
    item-kNN) falls back to popularity and says so. Any bad query raises before anything is scored.
    """
    catalogue = catalogue_of(ds)
    if model.n_items_ != catalogue.n_items:
        raise ModelError(f"the model scores {model.n_items_:,} items; dataset {ds.name!r} has {catalogue.n_items:,}",
                         hint="serve a model trained on this dataset version")
    resolved = [_resolve(ds, catalogue, q, limits) for q in queries]
    if not resolved:
        return []
    histories = [r.history for r in resolved]
    scores, flat = with_fallback(model.score(histories), catalogue.popularity)
    mask = seen_mask([r.history if q.exclude_seen else r.history[:0] for q, r in zip(queries, resolved, strict=True)],
                     catalogue.n_items)
    for row, r in enumerate(resolved):
        if r.allowed is not None:
            mask[row] |= torch.from_numpy(~r.allowed)
    out: list[Recommendations | None] = [None] * len(queries)
    ks = sorted({q.k for q in queries})
    for k in ks:  # one top-k per distinct k: ties break as in a query alone
        rows = [i for i, q in enumerate(queries) if q.k == k]
        part = (scores, mask) if len(ks) == 1 else (scores[rows], mask[rows])  # one k (the usual case): no copy
        idx, val = top_k(part[0], min(k, catalogue.n_items), part[1])
        for j, row in enumerate(rows):
            real = idx[j] >= 0
            r = resolved[row]
            out[row] = Recommendations(
                items=idx[j][real].numpy(), scores=val[j][real].float().numpy(), history=r.history,
                fallback=bool(flat[row]), model=model.identity, family=model.family, user=queries[row].user,
                ignored=r.ignored, candidates=catalogue.n_items if r.allowed is None else int(r.allowed.sum()))
    return out


def recommend_for(model: Recommender, ds: Dataset, query: Query, limits: Limits = Limits(), *,
                  cached: bool = False) -> Recommendations:
    """Top-k for one query (`recommend_batch` of one). `cached`: reuse the answer for the same model identity,
    dataset version and query (a page rerun); a server leaves it off so every request is scored."""
    if not cached:
        return recommend_batch(model, ds, [query], limits)[0]
    key = (model.identity, catalogue_of(ds).version, query, limits)
    return _RESULTS.get_or_compute(key, lambda: recommend_batch(model, ds, [query], limits)[0])


def item_index(catalogue: Catalogue, item_id: str) -> int:
    """The index of `item_id` (UnknownIdError naming it otherwise)."""
    index = catalogue.index.get(str(item_id))
    if index is None:
        raise UnknownIdError(f"item {item_id!r} is not in dataset {catalogue.dataset!r}", setting="item_id",
                             hint="pass an id from the item column")
    return index


def similar(model: Recommender, ds: Dataset, item_id: str, k: int = 10, limits: Limits = Limits()) -> dict:
    """The k items nearest `item_id` by the model's item embeddings, as plain data (ModelError for a model whose
    item vectors mean nothing, such as popularity)."""
    if not 1 <= k <= limits.max_k:
        raise ConfigError(f"k must be between 1 and {limits.max_k}, got {k}", setting="k")
    catalogue = catalogue_of(ds)
    frame = similar_items(model, item_index(catalogue, item_id), k)
    labels, pop = catalogue.labels, catalogue.popularity
    rows = [{"rank": int(r), "item_id": str(catalogue.item_ids[i]), "label": str(labels[i]),
             "similarity": float(s), "popularity": int(pop[i])}
            for r, i, s in zip(frame["rank"], frame["item"], frame["similarity"], strict=True)]
    return {"model": model.family, "model_version": model.identity, "item": catalogue.item(item_index(catalogue, item_id)),
            "similar": rows}


def contributors(model: Recommender, catalogue: Catalogue, history: np.ndarray, items: np.ndarray, *, top: int = 3,
                 budget_s: float = 0.05, max_history: int = 50, chunk: int = 16) -> dict:
    """Which history items lift each recommended item most: leave-one-out score deltas (the item's score with the
    whole history minus its score without that item, every occurrence removed), over the `max_history` most recent
    distinct items, scored in chunks until `budget_s` is spent. `complete` says whether every one was checked."""
    recent = list(dict.fromkeys(int(i) for i in np.asarray(history)[::-1]))[:max_history]
    targets = np.asarray(items, dtype=np.int64)
    if not len(recent) or not len(targets):
        return {"method": "leave-one-out", "complete": True, "checked": 0, "items": {}}
    started = time.perf_counter()
    full = model.score_items([history], targets)[0]
    deltas, checked = [], []
    for start in range(0, len(recent), chunk):
        part = recent[start:start + chunk]
        without = [history[history != h] for h in part]
        deltas.append(full[None, :] - model.score_items(without, targets))
        checked += part
        if time.perf_counter() - started > budget_s:
            break
    delta = torch.cat(deltas).numpy()  # [checked, items]
    labels, ids = catalogue.labels, catalogue.item_ids
    best = np.argsort(-delta, axis=0, kind="stable")[:top]
    per_item = {str(ids[t]): [{"item_id": str(ids[checked[h]]), "label": str(labels[checked[h]]),
                               "delta": round(float(delta[h, j]), 6)} for h in best[:, j] if delta[h, j] > 0]
                for j, t in enumerate(targets.tolist())}
    return {"method": "leave-one-out", "complete": len(checked) == len(recent), "checked": len(checked),
            "items": per_item}
