"""Top-K recommendations for a user or any free-form history, with filters, what-if diffs and neighbours.

Every function scores through `Recommender.score(histories)`, so a dataset user, an edited
("what-if") history and a cold-start list of liked items take the same path. Seen items are never
recommended. A model with no signal for a history (item-kNN/EASE return all zeros for an empty one)
falls back to popularity, and the result says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_core.data.dataset import ORDER_TIMESTAMP, Dataset
from recsys_core.data.item_schema import ITEM_ID, TITLE
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.evaluation.metrics import top_k
from recsys_core.models.base import Recommender
from recsys_core.models.histories import flatten
from recsys_core.progress import Progress

# Score rows held at once in `recommend_many`: ~128 MiB of float32 whatever the catalogue size.
_MAX_CELLS = 2**25
FALLBACK_NOTE = "the model has no signal for this history (e.g. it is empty): most popular items shown instead"


# ---- candidate filters ---------------------------------------------------------------------------


@dataclass
class Filters:
    """Which items may be recommended, from item metadata.

    `any_of`: column -> values; a '|'-joined multi-valued column (e.g. genres) must contain at least
    one of them. `between`: column -> (low, high), inclusive, either end None; items with no value
    in that column are dropped while the range is set.
    """

    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    between: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def active(self) -> bool:
        return any(len(v) for v in self.any_of.values()) or \
            any(lo is not None or hi is not None for lo, hi in self.between.values())


def filter_mask(items: pd.DataFrame, filters: Filters | None) -> np.ndarray:
    """Bool [n_items]: True where an item passes every filter."""
    keep = np.ones(len(items), dtype=bool)
    if filters is None:
        return keep
    for column, wanted in filters.any_of.items():
        if not len(wanted):
            continue
        _require_column(items, column)
        # One vectorised regex per column: a whole '|'-separated field equal to any wanted value.
        pattern = r"(?:^|\|)\s*(?:" + "|".join(re.escape(str(w)) for w in wanted) + r")\s*(?:\||$)"
        keep &= items[column].fillna("").astype(str).str.contains(pattern, regex=True).to_numpy(dtype=bool)
    for column, (low, high) in filters.between.items():
        if low is None and high is None:
            continue
        _require_column(items, column)
        values = pd.to_numeric(items[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = ~np.isnan(values)
        if low is not None:
            ok &= values >= low
        if high is not None:
            ok &= values <= high
        keep &= ok
    return keep


def _require_column(items: pd.DataFrame, column: str) -> None:
    if column not in items.columns:
        raise ConfigError(f"cannot filter on {column!r}: the items have no such column",
                        hint=f"item columns: {', '.join(map(str, items.columns))}")


def popular_mask(popularity: np.ndarray, top_fraction: float) -> np.ndarray:
    """Bool [n_items]: True for the `top_fraction` most popular items (ties broken by item index)."""
    if not 0.0 <= top_fraction < 1.0:
        raise ConfigError(f"hide_popular_top must be a fraction in [0, 1), got {top_fraction}")
    pop = np.asarray(popularity)
    n_drop = round(top_fraction * len(pop))
    out = np.zeros(len(pop), dtype=bool)
    out[np.argsort(-pop, kind="stable")[:n_drop]] = True
    return out


def candidate_mask(n_items: int, *, items: pd.DataFrame | None = None, filters: Filters | None = None,
                   popularity: np.ndarray | None = None, hide_popular_top: float = 0.0) -> np.ndarray | None:
    """Bool [n_items] of recommendable items, or None when nothing is filtered."""
    allowed = None
    if filters is not None and filters.active():
        if items is None:
            raise DataError("attribute filters need the item metadata", hint="pass items=dataset.items")
        allowed = filter_mask(items, filters)
    if hide_popular_top:
        if popularity is None:
            raise DataError("hiding popular items needs item popularity", hint="pass popularity=dataset.item_popularity")
        hidden = ~popular_mask(popularity, hide_popular_top)
        allowed = hidden if allowed is None else allowed & hidden
    if allowed is not None and len(allowed) != n_items:
        raise ModelError(f"item metadata covers {len(allowed)} items, the model {n_items}",
                        hint="use the dataset the model was trained on")
    return allowed


# ---- top-K ---------------------------------------------------------------------------------------


@dataclass
class TopK:
    """Batched result: item indices [n, k] (-1 pads rows with fewer candidates), scores, fallback rows."""

    items: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray


def seen_mask(histories: Sequence[np.ndarray], n_items: int) -> torch.Tensor:
    lengths, flat = flatten(histories, n_items)
    mask = torch.zeros((len(histories), n_items), dtype=torch.bool)
    rows = np.repeat(np.arange(len(histories)), lengths)
    mask[torch.from_numpy(rows), torch.from_numpy(flat)] = True
    return mask


def with_fallback(scores: torch.Tensor, popularity: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows where every item scores the same (no signal) by popularity; which rows were replaced."""
    if popularity is None:
        return scores, torch.zeros(len(scores), dtype=torch.bool)
    flat = scores.amax(dim=1) == scores.amin(dim=1)
    if not bool(flat.any()):
        return scores, flat
    pop = torch.as_tensor(np.asarray(popularity, dtype=np.float32))
    return torch.where(flat[:, None], pop[None, :], scores), flat


def recommend_many(model: Recommender, histories: Sequence[np.ndarray], k: int = 10, *,
                   exclude: Sequence[np.ndarray] | None = None, allowed: np.ndarray | None = None,
                   popularity: np.ndarray | None = None, batch_size: int = 1024,
                   progress: Progress | None = None) -> TopK:
    """Top-k per history: one `score` call and one `torch.topk` per batch of histories.

    Each history's own items are excluded, plus `exclude[i]` if given; `allowed` (bool [n_items])
    restricts the candidates. With `popularity`, rows the model scores flat fall back to it.
    """
    if exclude is not None and len(exclude) != len(histories):
        raise DataError(f"got {len(exclude)} exclusion lists for {len(histories)} histories")
    n_items, n = model.n_items_, len(histories)
    width = min(k, n_items)
    blocked = None if allowed is None else torch.from_numpy(~np.asarray(allowed, dtype=bool))
    batch = max(1, min(batch_size, _MAX_CELLS // max(n_items, 1)))
    items = np.full((n, width), -1, dtype=np.int64)
    scores = np.full((n, width), -np.inf, dtype=np.float32)
    fallback = np.zeros(n, dtype=bool)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        part = list(histories[start:stop])
        raw, flat = with_fallback(model.score(part), popularity)
        mask = seen_mask(part, n_items)
        if exclude is not None:
            mask |= seen_mask(list(exclude[start:stop]), n_items)
        if blocked is not None:
            mask |= blocked[None, :]
        idx, val = top_k(raw, width, mask)
        items[start:stop], scores[start:stop], fallback[start:stop] = idx.numpy(), val.float().numpy(), flat.numpy()
        if progress is not None:
            progress.update(stop, n, message="recommending")
            if progress.cancelled:
                break
    return TopK(items, scores, fallback)


def item_columns(indices: np.ndarray, items: pd.DataFrame | None, item_ids: Sequence[str],
                 popularity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """item, item_id, title, every metadata column (+ popularity) for the given item indices, as arrays."""
    indices = np.asarray(indices, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=object)[indices].astype(str)
    out = {"item": indices, "item_id": ids, "title": ids}
    if items is not None:
        # Gather column by column and build the frame once: per-column DataFrame inserts cost ~30x more.
        for column in items.columns:
            if column == "item_id":
                continue
            values = items[column].take(indices).to_numpy()
            if column == "title":
                values = np.where(values.astype(str) != "", values, ids)
            out[column] = values
    if popularity is not None:
        out["popularity"] = np.asarray(popularity)[indices]
    return out


def item_table(indices: np.ndarray, items: pd.DataFrame | None, item_ids: Sequence[str],
               popularity: np.ndarray | None = None) -> pd.DataFrame:
    """item, item_id, title and every metadata column (+ popularity) for the given item indices."""
    return pd.DataFrame(item_columns(indices, items, item_ids, popularity))


def _ranked(head: str, values: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """rank, item, item_id, `head` (score or similarity), then the other item columns."""
    first = {"rank": np.arange(1, len(values) + 1), "item": columns.pop("item"), "item_id": columns.pop("item_id"),
             head: values}
    return pd.DataFrame({**first, **columns})


def recommend(model: Recommender, history: Sequence[int] | np.ndarray, k: int = 10, *,
              exclude: Sequence[int] | np.ndarray | None = None, filters: Filters | None = None,
              popularity: np.ndarray | None = None, hide_popular_top: float = 0.0,
              items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Top-k for one history (a dataset user's, an edited one, or liked items of a new user).

    Columns: rank, item (index), item_id, score, title, the item metadata columns, popularity (when
    given). The history's items and `exclude` are never recommended; `filters` (needs `items`) and
    `hide_popular_top` (fraction of the most popular items dropped, needs `popularity`) restrict the
    candidates. `attrs["fallback"]` is True (and `attrs["note"]` says why) when the model had no
    signal and popularity was used.
    """
    hist = np.asarray(history, dtype=np.int64).reshape(-1)
    allowed = candidate_mask(model.n_items_, items=items, filters=filters, popularity=popularity,
                             hide_popular_top=hide_popular_top)
    extra = None if exclude is None else [np.asarray(exclude, dtype=np.int64).reshape(-1)]
    top = recommend_many(model, [hist], k, exclude=extra, allowed=allowed, popularity=popularity)
    real = top.items[0] >= 0
    frame = _ranked("score", top.scores[0][real], item_columns(top.items[0][real], items, model.item_ids_, popularity))
    frame.attrs["fallback"] = bool(top.fallback[0])
    frame.attrs["note"] = FALLBACK_NOTE if top.fallback[0] else ""
    return frame


# ---- what-if -------------------------------------------------------------------------------------


def _item_list(top: pd.DataFrame | Sequence[int] | np.ndarray) -> list[int]:
    if isinstance(top, pd.DataFrame):
        return [int(i) for i in top["item"]]
    return [int(i) for i in np.asarray(top).reshape(-1) if i >= 0]


def rank_changes(before: pd.DataFrame | Sequence[int], after: pd.DataFrame | Sequence[int]) -> pd.DataFrame:
    """How a top-K list moved: one row per item in `after` (in its order), then the items that dropped out.

    Columns: item, rank (new, <NA> if dropped), old_rank (<NA> if new), move (old - new: positive
    went up), status ('up', 'down', 'same', 'new', 'dropped'), label ('↑2', '↓1', '=', 'new', 'dropped') and
    the ranks in words for a table, `rank_now` and `rank_before` ('3'; 'dropped out' / 'not in the list' where there is
    no rank, never a missing value).
    """
    old, new = _item_list(before), _item_list(after)
    old_rank = {item: r for r, item in enumerate(old, 1)}
    rows = []
    for r, item in enumerate(new, 1):
        was = old_rank.get(item)
        rows.append((item, r, was))
    kept = set(new)
    rows += [(item, None, r) for r, item in enumerate(old, 1) if item not in kept]
    frame = pd.DataFrame(rows, columns=["item", "rank", "old_rank"])
    frame["item"] = frame["item"].astype(np.int64)
    frame["rank"] = frame["rank"].astype("Int64")
    frame["old_rank"] = frame["old_rank"].astype("Int64")
    frame["move"] = (frame["old_rank"] - frame["rank"]).astype("Int64")
    frame["status"] = [_status(r, o) for r, o in zip(frame["rank"], frame["old_rank"], strict=True)]
    frame["label"] = [_label(s, m) for s, m in zip(frame["status"], frame["move"], strict=True)]
    frame["rank_now"] = [_rank_words(r, "dropped out") for r in frame["rank"]]
    frame["rank_before"] = [_rank_words(r, "not in the list") for r in frame["old_rank"]]
    return frame


def _rank_words(rank: object, missing: str) -> str:
    return missing if pd.isna(rank) else str(int(rank))


def _status(rank: object, old: object) -> str:
    if pd.isna(rank):
        return "dropped"
    if pd.isna(old):
        return "new"
    return "up" if old > rank else "down" if old < rank else "same"


def _label(status: str, move: object) -> str:
    if status == "up":
        return f"↑{int(move)}"
    if status == "down":
        return f"↓{-int(move)}"
    return {"same": "=", "new": "new", "dropped": "dropped"}[status]


# ---- neighbours and overlap ----------------------------------------------------------------------


def nearest_items(vectors: np.ndarray | torch.Tensor, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The k items with the highest cosine to `item` (itself excluded): (indices, cosines)."""
    v = vectors if isinstance(vectors, torch.Tensor) else torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if v.ndim != 2 or not 0 <= item < v.shape[0]:
        raise DataError(f"item index {item} outside the catalogue of {v.shape[0]} items")
    if v.shape[1] < 2:
        raise DataError("this model's item vectors have a single dimension, so every cosine is the same",
                        hint="popularity has no item embedding: pick EASE, item-kNN or a transformer model")
    v = torch.nn.functional.normalize(v.float(), dim=1)
    cos = v @ v[item]
    cos[item] = float("-inf")  # an item is not its own neighbour
    idx, val = top_k(cos[None, :], k)
    real = idx[0] >= 0
    return idx[0][real].numpy(), val[0][real].numpy()


def _neighbour_frame(vectors: np.ndarray | torch.Tensor, item: int, k: int, item_ids: Sequence[str],
                     items: pd.DataFrame | None, popularity: np.ndarray | None) -> pd.DataFrame:
    idx, cos = nearest_items(vectors, item, k)
    return _ranked("similarity", cos, item_columns(idx, items, item_ids, popularity))


def similar_items(model: Recommender, item: int, k: int = 10, *, items: pd.DataFrame | None = None,
                  popularity: np.ndarray | None = None) -> pd.DataFrame:
    """The k items closest to `item` by cosine of the model's item embeddings (itself excluded).

    Columns: rank, item, item_id, similarity, title, metadata, popularity (when given). A model whose item
    vectors carry no similarity (`capabilities.similar_items` false: popularity) is refused with a ModelError.
    """
    if not model.capabilities.similar_items:
        raise ModelError(f"a {model.family} model has no item embeddings whose cosine means similar",
                         hint="pick EASE, item-kNN, a transformer model or the text tower")
    return _neighbour_frame(model.item_embeddings(), item, k, model.item_ids_, items, popularity)


def similar_items_text(text_model_or_vectors: Recommender | np.ndarray | torch.Tensor, item: int, k: int = 10, *,
                       item_ids: Sequence[str] | None = None, items: pd.DataFrame | None = None,
                       popularity: np.ndarray | None = None) -> pd.DataFrame:
    """Like `similar_items`, from a text tower's item text vectors (or any [n_items, dim] text vectors)."""
    if isinstance(text_model_or_vectors, Recommender):
        vectors = text_model_or_vectors.text_vectors()
        item_ids = text_model_or_vectors.item_ids_
    else:
        vectors = text_model_or_vectors
    if item_ids is None:
        item_ids = [str(i) for i in range(len(vectors))]
    return _neighbour_frame(vectors, item, k, item_ids, items, popularity)


def overlap(top_a: pd.DataFrame | Sequence[int], top_b: pd.DataFrame | Sequence[int]) -> dict:
    """Agreement of two top-K lists: jaccard, shared items (in A's order), only_a, only_b."""
    a, b = _item_list(top_a), _item_list(top_b)
    set_a, set_b = set(a), set(b)
    union = set_a | set_b
    return {
        "jaccard": len(set_a & set_b) / len(union) if union else 1.0,
        "shared": [i for i in a if i in set_b],
        "only_a": [i for i in a if i not in set_b],
        "only_b": [i for i in b if i not in set_a],
    }


# ---- users and their histories -------------------------------------------------------------------


def history_lengths(ds: Dataset) -> np.ndarray:
    return np.diff(ds.indptr)


def users_by_history_length(ds: Dataset) -> np.ndarray:
    """User indices ordered from shortest to longest history (ties by index)."""
    return np.argsort(history_lengths(ds), kind="stable")


def pick_user(ds: Dataset, kind: str = "random", seed: int | None = None, tail: float = 0.1) -> int:
    """A user index: 'random', 'long' (among the `tail` longest histories) or 'short' (the `tail` shortest)."""
    if ds.n_users == 0:
        raise DataError("the dataset has no users")
    rng = np.random.default_rng(seed)
    if kind == "random":
        return int(rng.integers(ds.n_users))
    order = users_by_history_length(ds)
    size = max(1, round(tail * ds.n_users))
    if kind == "long":
        return int(rng.choice(order[-size:]))
    if kind == "short":
        return int(rng.choice(order[:size]))
    raise ConfigError(f"unknown user pick {kind!r}", hint="use 'random', 'long' or 'short'")


def history_frame(ds: Dataset, user: int) -> pd.DataFrame:
    """A user's history, newest first when the dataset is ordered (else reversed file order): step, item,
    item_id, title, metadata, then what the data has: rating (a score), count (plays, clicks: how much), date
    (real timestamps only). A column the data lacks is left out, never shown as empty values."""
    start, stop = int(ds.indptr[user]), int(ds.indptr[user + 1])
    rows = ds.interactions.iloc[start:stop]
    columns = item_columns(rows["item"].to_numpy(), ds.items, ds.item_ids)
    if ds.has_ratings:
        columns["rating"] = rows["rating"].to_numpy()
    if ds.has_counts:
        columns["count"] = rows["count"].to_numpy()
    if ds.order == ORDER_TIMESTAMP:
        columns["date"] = pd.to_datetime(rows["timestamp"].to_numpy(), unit="s", utc=True)
    frame = pd.DataFrame({"step": np.arange(1, stop - start + 1), **columns})
    return frame.iloc[::-1].reset_index(drop=True)


def search_items(items: pd.DataFrame, query: str, limit: int = 50, popularity: np.ndarray | None = None) -> np.ndarray:
    """Item indices whose title (or id) contains `query`, case-insensitive, most popular first."""
    text = items[TITLE].where(items[TITLE] != "", items[ITEM_ID]).astype(str)
    hits = np.flatnonzero(text.str.contains(query.strip(), case=False, regex=False).to_numpy(dtype=bool))
    if popularity is not None:
        hits = hits[np.argsort(-np.asarray(popularity)[hits], kind="stable")]
    return hits[:limit]
