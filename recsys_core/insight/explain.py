"""Why a model recommends an item: Shapley values over the user's history, the item's attributes and its text.

Every explanation is a cooperative game whose players are parts of the input and whose value is the
model's own score for the item, `model.score(histories)[:, item]`. Nothing about the model is assumed
beyond that method, so the same code explains EASE, item-kNN, BERT4Rec, SASRec, the text tower and the
hybrid. All coalitions of one explanation are scored in a few large `score_items` calls; the global view
plans the games of many users first and scores their coalitions together.

* **History** (`Explainer.explain_history`): a player is one past interaction (a position in the
  time-ordered history, so a re-watched item is two players). A coalition keeps its players' items in
  their original order and drops the rest; the empty coalition is the empty history. With more than
  `max_players` interactions, the older ones form one extra player "older history".
* **Attributes** (`Explainer.explain_attributes`): an honest surrogate for "recommended because it is a
  Comedy like the ones you watch". The players are the recommended item's own attributes (genres, decade,
  popularity bucket) plus "other history items". Switching an attribute off drops every history item that
  shares it with the recommended item; switching "other" off drops the history items that share none.
  The values therefore add up to the same full - empty score difference as the history values, and an
  attribute the history does not share is a null player, with exactly zero attribution.
* **Text** (`Explainer.explain_text`, text tower only): the players are the words of the item's text; a
  coalition re-encodes the text made of its words, and the value is the cosine of that vector with the
  user's vector, i.e. the model's score of the item with part of its text blanked out.

Up to `max_exact` players the Shapley values are exact, above that antithetic permutation estimates
(`recsys_core.insight.shapley`); the method and the number of model evaluations are part of every result.

`explainer_for(model, dataset, version)` is the one Explainer of a model on a dataset version, shared by
the Explain and Blurbs pages and every session, so its cache of explanations is shared too.

`deletion_check` tests faithfulness: it removes the k most positively attributed history items and,
for comparison, k random ones (several draws), and reports the item's score and rank after each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.item_schema import GENRES, MULTI_SEPARATOR, YEAR
from recsys_core.errors import DataError, ModelError
from recsys_core.evaluation.metrics import popularity_percentile, top_k
from recsys_core.insight.shapley import MAX_EVALS, MAX_EXACT, Coalitions, plan_coalitions, shapley
from recsys_core.models.base import Recommender
from recsys_core.progress import Progress

MAX_PLAYERS = 200  # most recent interactions explained one by one; older ones form one player
MAX_WORDS = 48  # words of an item text explained (the encoder reads ~64 tokens anyway)
TEXT_MAX_EVALS = 400  # re-encoding text is ~100x dearer than scoring a history
_MAX_CELLS = 2**24  # score rows per call x catalogue size: ~64 MiB of float32 at a time
MAX_EXPLAINERS = 4  # explainers kept by `explainer_for` (each holds its model and its explanations)


# ---- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Explanation:
    """Shapley values of one recommendation: `values[i]` is how much player i pushes the item's score.

    `values.sum() == full_value - base_value` (exactly for "exact" and "permutation": every sampled
    permutation telescopes). `members[i]` lists the history positions player i stands for (empty for
    text players).
    """

    item: int
    kind: str  # "history" | "attributes" | "text"
    labels: tuple[str, ...]
    values: np.ndarray
    base_value: float  # score with every player removed (empty history, or blank text)
    full_value: float  # score with every player present
    method: str  # "exact" | "permutation"
    n_evals: int  # model evaluations (coalitions scored)
    seconds: float
    members: tuple[np.ndarray, ...] = ()
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # history: item index per player, -1 if a group

    def frame(self) -> pd.DataFrame:
        """One row per player (label, value, item, size), strongest push first."""
        sizes = [len(m) for m in self.members] if self.members else [1] * len(self.labels)
        items = self.items if len(self.items) == len(self.labels) else np.full(len(self.labels), -1)
        out = pd.DataFrame({"label": list(self.labels), "value": self.values.astype(float), "item": items,
                            "size": sizes})
        return out.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class DeletionCheck:
    """Score and rank of the item after deleting its k most positive history items vs k random ones."""

    k: int
    n_random: int
    score: float  # with the full history
    rank: int  # 1-based, seen items excluded, ties counted against the item
    top_score: float  # after deleting the top-k attributed items
    top_rank: int
    random_score: float  # mean over the random draws
    random_rank: float
    removed: tuple[int, ...]  # history positions deleted as "top-k"
    random_abs_change: float = 0.0  # mean |score change| over the random draws (they may raise the score)

    @property
    def top_drop(self) -> float:
        return self.score - self.top_score

    @property
    def random_drop(self) -> float:
        return self.score - self.random_score


def warm_up() -> None:
    """Kept for callers that warmed shap's JIT: the sampler is plain NumPy now, nothing to compile."""


# ---- games over a history ------------------------------------------------------------------------


def score_column(model: Recommender, histories: Sequence[np.ndarray], item: int) -> np.ndarray:
    """`model.score(histories)[:, item]` as float64, scoring only that item (`score_items`).

    Chunked as if the full catalogue were scored, so a model without a cheaper `score_items` (it then
    scores everything and keeps one column) still holds ~64 MiB of scores at a time.
    """
    rows = max(1, _MAX_CELLS // max(model.n_items_, 1))
    parts = [model.score_items(histories[s:s + rows], [item])[:, 0].double().numpy()
             for s in range(0, len(histories), rows)]
    return np.concatenate(parts) if parts else np.zeros(0)


def masked_histories(history: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """One history per row of `keep` [m, len(history)]: the kept items, order preserved."""
    _, cols = np.nonzero(keep)  # row-major: each row's columns come out in ascending order
    return np.split(history[cols], np.cumsum(keep.sum(axis=1))[:-1])


def _as_history(history: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(history, dtype=np.int64).reshape(-1)


# ---- item attributes -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ItemAttributes:
    """Which describable attributes each item has: genres (or tags, ...), decade, popularity bucket."""

    names: tuple[str, ...]
    matrix: sp.csr_matrix  # bool [n_items, n_attributes]

    def of(self, item: int) -> np.ndarray:
        return self.matrix.indices[self.matrix.indptr[item]:self.matrix.indptr[item + 1]]


POPULARITY_BUCKETS = ((0.99, "Blockbuster (top 1% by popularity)"), (0.90, "Very popular (top 10%)"),
                      (0.50, "Popular (top half)"), (0.0, "Long tail (bottom half by popularity)"))


def item_attributes(items: pd.DataFrame, item_popularity: np.ndarray) -> ItemAttributes:
    """Attributes of every item from its metadata (genres, decade of release) and its popularity."""
    n = len(items)
    rows, labels = [], []
    values = items[GENRES].astype(str).str.split(MULTI_SEPARATOR).explode()
    values = values[values != ""]
    if len(values):
        rows.append(values.index.to_numpy())
        labels.append(("Genre: " + values).to_numpy(dtype=object))
    years = items[YEAR]
    ok = years.notna().to_numpy()
    if ok.any():
        decades = (years[ok].astype(int) // 10 * 10).astype(str).to_numpy(dtype=object)
        rows.append(np.flatnonzero(ok))
        labels.append("Released in the " + decades + "s")
    if len(item_popularity) == n and n:
        pct = popularity_percentile(item_popularity)
        names = np.array([name for _, name in POPULARITY_BUCKETS], dtype=object)
        cuts = np.array([t for t, _ in POPULARITY_BUCKETS][::-1][1:])  # ascending thresholds above the lowest bucket
        rows.append(np.arange(n))
        labels.append(names[::-1][np.searchsorted(cuts, pct, side="right")])
    if not rows:
        return ItemAttributes((), sp.csr_matrix((n, 0), dtype=bool))
    codes, names = pd.factorize(pd.Series(np.concatenate(labels)), sort=True)
    matrix = sp.csr_matrix((np.ones(len(codes), bool), (np.concatenate(rows), codes)), shape=(n, len(names)))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return ItemAttributes(tuple(str(s) for s in names), matrix)


# ---- the explainer -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Game:
    """One history or attribute game, planned: the coalitions to score and how to read the values back."""

    item: int
    kind: str  # "history" | "attributes"
    labels: tuple[str, ...]
    membership: np.ndarray  # bool [n_labels, len(history)]: the positions each player stands for
    active: np.ndarray  # players in the game (the others are null players, value 0)
    plan: Coalitions
    members: tuple[np.ndarray, ...]
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def keep(self) -> np.ndarray:
        """bool [n_coalitions, len(history)]: the history positions each coalition keeps."""
        member = self.membership[self.active].astype(np.float32)
        return ((~self.plan.masks).astype(np.float32) @ member) == 0

    def explanation(self, v: np.ndarray, start: float) -> Explanation:
        result = self.plan.solve(v)
        values = np.zeros(len(self.labels))
        values[self.active] = result.values
        return Explanation(self.item, self.kind, self.labels, values, result.base, result.full, result.method,
                           result.n_evals, time.perf_counter() - start, self.members, self.items)


class Explainer:
    """Explanations of one model's recommendations on one dataset, cached per (kind, history, item, budget).

    One Explainer per model and dataset version (`explainer_for`): pages, sessions and the blurb writer
    share it, so its cache is the thread-safe `KeyedCache`.
    """

    def __init__(self, model: Recommender, dataset: Dataset | None = None, *, max_exact: int = MAX_EXACT,
                 max_evals: int = MAX_EVALS, max_players: int = MAX_PLAYERS, cache_size: int = 256,
                 seed: int = 0) -> None:
        self.model = model
        self.max_exact, self.max_evals, self.max_players, self.seed = max_exact, max_evals, max_players, seed
        if dataset is not None:
            model.check_fits(dataset)
            self.titles = list(dataset.labels)
            self.attributes = item_attributes(dataset.items, dataset.item_popularity)
        else:
            self.titles = [f"item {i}" for i in model.item_ids_]
            self.attributes = ItemAttributes((), sp.csr_matrix((model.n_items_, 0), dtype=bool))
        self._cache: KeyedCache[Explanation] = KeyedCache(cache_size)

    # -- cache

    def _cached(self, key: tuple, compute: Callable[[], Explanation]) -> Explanation:
        return self._cache.get_or_compute(key, compute)

    def _check_item(self, item: int) -> int:
        if not 0 <= int(item) < self.model.n_items_:
            raise DataError(f"item index {item} is outside the catalogue of {self.model.n_items_} items")
        return int(item)

    # -- history

    def explain_history(self, history: Sequence[int] | np.ndarray, item: int,
                        max_evals: int | None = None) -> Explanation:
        """Shapley value of each past interaction for the item's score (newest `max_players` one by one)."""
        history, item = _as_history(history), self._check_item(item)
        budget = max_evals or self.max_evals
        key = ("history", tuple(history.tolist()), item, budget)
        return self._cached(key, lambda: self._explain_history(history, item, budget))

    def _explain_history(self, history: np.ndarray, item: int, budget: int) -> Explanation:
        start = time.perf_counter()
        game = self._history_game(history, item, budget)
        return game.explanation(score_column(self.model, masked_histories(history, game.keep()), item), start)

    def _history_game(self, history: np.ndarray, item: int, budget: int) -> _Game:
        n = len(history)
        older = max(0, n - self.max_players)
        # Player of each position: the older ones share player 0 when there are too many to explain one by one.
        players = np.arange(n) - older + (1 if older else 0)
        players[:older] = 0
        n_players = int(players.max()) + 1 if n else 0
        membership = np.zeros((n_players, n), dtype=bool)
        membership[players, np.arange(n)] = True
        members = tuple(np.flatnonzero(row) for row in membership)
        items = np.array([history[m[0]] if len(m) == 1 else -1 for m in members], dtype=np.int64)
        labels = tuple(self.titles[i] if i >= 0 else f"Older history ({older} items)" for i in items)
        plan = plan_coalitions(n_players, self.max_exact, budget, self.seed)
        return _Game(item, "history", labels, membership, np.arange(n_players), plan, members, items)

    # -- attributes

    def explain_attributes(self, history: Sequence[int] | np.ndarray, item: int) -> Explanation:
        """Shapley value of each attribute the item shares with the history (see the module docstring)."""
        history, item = _as_history(history), self._check_item(item)
        key = ("attributes", tuple(history.tolist()), item)
        return self._cached(key, lambda: self._explain_attributes(history, item))

    def _explain_attributes(self, history: np.ndarray, item: int) -> Explanation:
        start = time.perf_counter()
        game = self._attribute_game(history, item)
        return game.explanation(score_column(self.model, masked_histories(history, game.keep()), item), start)

    def _attribute_game(self, history: np.ndarray, item: int) -> _Game:
        own = self.attributes.of(item)
        shared = self.attributes.matrix[history][:, own].toarray().T if len(history) else np.zeros((len(own), 0), bool)
        other = ~shared.any(axis=0)
        membership = np.vstack([shared, other[None, :]]).astype(bool)
        labels = tuple(self.attributes.names[a] for a in own) + ("Other history items",)
        active = np.flatnonzero(membership.any(axis=1))  # attributes nobody in the history shares are null players
        plan = plan_coalitions(len(active), self.max_exact, self.max_evals, self.seed)
        members = tuple(np.flatnonzero(row) for row in membership)
        return _Game(item, "attributes", labels, membership, active, plan, members)

    # -- text (text tower)

    def explain_text(self, history: Sequence[int] | np.ndarray, item: int,
                     max_evals: int = TEXT_MAX_EVALS) -> Explanation:
        """Shapley value of each word of the item's text (text tower only): blank words, re-encode, re-score."""
        history, item = _as_history(history), self._check_item(item)
        if not self.model.capabilities.text:
            raise ModelError(f"word attributions need a model that reads item text; this model is {self.model.family}",
                             hint="train a text tower on this dataset")
        key = ("text", tuple(history.tolist()), item, max_evals)
        return self._cached(key, lambda: self._explain_text(history, item, max_evals))

    def _explain_text(self, history: np.ndarray, item: int, max_evals: int) -> Explanation:
        start = time.perf_counter()
        words = np.array(self.model.item_text(item).split()[:MAX_WORDS], dtype=object)
        user = torch.as_tensor(self.model.user_embeddings([history]))[0]

        def value(masks: np.ndarray) -> np.ndarray:
            texts = [" ".join(words[row]) for row in masks]  # building strings has no vectorised form
            return (self.model.encode_texts(texts) @ user).double().numpy()

        result = shapley(value, len(words), self.max_exact, max_evals, self.seed)
        return Explanation(item, "text", tuple(words), result.values, result.base, result.full, result.method,
                           result.n_evals, time.perf_counter() - start)

    # -- faithfulness

    def deletion_check(self, history: Sequence[int] | np.ndarray, item: int, k: int = 3, n_random: int = 10,
                       explanation: Explanation | None = None) -> DeletionCheck:
        """Delete the k most positive history items vs k random ones (mean of `n_random` draws): score and rank."""
        history, item = _as_history(history), self._check_item(item)
        expl = explanation if explanation is not None else self.explain_history(history, item)
        single = np.flatnonzero(expl.items >= 0)  # players standing for one interaction
        order = single[np.argsort(-expl.values[single], kind="stable")][:k]
        removed = np.concatenate([expl.members[p] for p in order]) if len(order) else np.zeros(0, np.int64)
        k_eff = len(removed)
        rng = np.random.default_rng(self.seed)
        random_sets = [rng.choice(len(history), size=k_eff, replace=False) for _ in range(n_random)]
        keep = np.ones((2 + n_random, len(history)), dtype=bool)
        keep[1, removed] = False
        for r, chosen in enumerate(random_sets):
            keep[2 + r, chosen] = False
        scores = self.model.score(masked_histories(history, keep))
        ranks = _ranks(scores, item, history)
        values = scores[:, item].double().numpy()
        return DeletionCheck(k_eff, n_random, float(values[0]), int(ranks[0]), float(values[1]), int(ranks[1]),
                             float(values[2:].mean()), float(ranks[2:].mean()), tuple(int(p) for p in removed),
                             float(np.abs(values[2:] - values[0]).mean()))

    # -- words

    def reasons(self, history_expl: Explanation, attribute_expl: Explanation | None = None, k: int = 3) -> str:
        """Plain-language sentence: the top-k positive history items, and the top shared attribute if it helps."""
        frame = history_expl.frame()
        positive = frame[(frame["value"] > 0) & (frame["item"] >= 0)].head(k)
        title = self.titles[history_expl.item]
        if positive.empty:
            sentence = (f"None of the past items raises the score of \u201c{title}\u201d: the model recommends it "
                        f"from its general preferences (its score with an empty history is "
                        f"{history_expl.base_value:.3g}, with this history {history_expl.full_value:.3g}).")
        else:
            names = [f"\u201c{t}\u201d" for t in positive["label"]]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            sentence = f"\u201c{title}\u201d is recommended mainly because of {listed}"
            sentence += self._attribute_clause(attribute_expl, len(history_expl.members)) + "."
        return sentence

    def _attribute_clause(self, expl: Explanation | None, n_history: int) -> str:
        if expl is None or not len(expl.values):
            return ""
        best = int(np.argmax(expl.values[:-1])) if len(expl.values) > 1 else -1
        if best < 0 or expl.values[best] <= 0 or not len(expl.members[best]):
            return ""
        return (f"; it also shares \u201c{expl.labels[best]}\u201d with {len(expl.members[best])} "
                f"of the items in the history, which raises its score")

    # -- recommendations and the global view

    def top_items(self, histories: Sequence[np.ndarray], k: int = 1) -> np.ndarray:
        """Top-k unseen items per history [len(histories), k] (-1 pads), one batched score call."""
        scores = self.model.score(histories)
        return top_k(scores, k, exclude=[_as_history(h) for h in histories])[0].numpy()

    def global_view(self, histories: Sequence[np.ndarray], items: Sequence[int] | None = None,
                    progress: Progress | None = None, max_evals: int | None = None) -> pd.DataFrame:
        """Long frame of history and attribute Shapley values over many (history, item) pairs.

        Columns: row (which pair), kind ("item" | "attribute"), label, value, feature (the colour of a
        SHAP summary plot: recency 0..1 of a history item, or the share of the history carrying an attribute).
        `items` defaults to each history's top-1 recommendation. The coalitions of many users are scored
        together, one `score_items` call per batch, with exactly the values `explain_history` and
        `explain_attributes` give user by user; `progress` moves after every batch (its fraction counts
        coalitions, its message users) and its cancel flag is read between batches.
        """
        histories = [_as_history(h) for h in histories]
        items = self.top_items(histories, 1)[:, 0] if items is None else np.asarray(items)
        todo = [row for row, (h, item) in enumerate(zip(histories, items)) if item >= 0 and len(h)]
        games = {row: (self._history_game(histories[row], int(items[row]), max_evals or self.max_evals),
                       self._attribute_game(histories[row], int(items[row]))) for row in todo}
        sizes = [sum(len(game.plan.masks) for game in games[row]) for row in todo]
        scorer = _PairScorer(self.model, progress, sum(sizes), len(todo))
        parts = []
        for group in _groups(todo, sizes, GROUP_ROWS):
            values = scorer.values([(histories[row], game) for row in group for game in games[row]])
            if values is None:  # cancelled
                break
            solved = iter(values)
            for row in group:
                h, a = (game.explanation(next(solved), time.perf_counter()) for game in games[row])
                parts.append(_global_rows(row, histories[row], h, a))
            scorer.users_done += len(group)
            scorer.report()
        columns = ["row", "kind", "label", "value", "feature", "item"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


_EXPLAINERS: KeyedCache[Explainer] = KeyedCache(MAX_EXPLAINERS)


def explainer_for(model: Recommender, dataset: Dataset, version: str) -> Explainer:
    """The one Explainer (default settings) of `model` on `dataset`, shared by every caller in this process.

    `version` names the dataset's content (e.g. a saved dataset's name, save time and folder): the
    explanations use its titles and attributes, so another version of the data gets its own Explainer.
    """
    return _EXPLAINERS.get_or_compute((model.identity, version), lambda: Explainer(model, dataset))


GROUP_ROWS = 16_384  # coalitions planned at a time: bounds memory, and progress moves every group


def _groups(rows: list[int], sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive runs of `rows` whose sizes add up to at most `limit` (at least one row each)."""
    out: list[list[int]] = []
    total = limit
    for row, size in zip(rows, sizes):
        if total + size > limit:
            out.append([])
            total = 0
        out[-1].append(row)
        total += size
    return out


class _PairScorer:
    """Scores (masked history, item) pairs of many games in few `score_items` calls, each sized to take
    about `TARGET_S` (measured as it goes), so a cancel is read, and progress reported, at least that often.
    Progress counts coalitions (so the ETA is right however uneven the users are) and says it in users."""

    TARGET_S = 0.25

    def __init__(self, model: Recommender, progress: Progress | None, rows_total: int, n_users: int) -> None:
        self.model, self.progress = model, progress
        self.max_rows = max(1, _MAX_CELLS // max(model.n_items_, 1))
        self.rows = min(64, self.max_rows)
        self.rows_total, self.rows_done, self.n_users, self.users_done = rows_total, 0, n_users, 0
        self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress.update(self.rows_done, self.rows_total,
                                 message=f"explained {self.users_done} of {self.n_users} users")

    def values(self, games: list[tuple[np.ndarray, _Game]]) -> list[np.ndarray] | None:
        """Each game's coalition values, in order; None once cancelled."""
        masked = [masked_histories(history, game.keep()) for history, game in games]
        histories = [h for part in masked for h in part]
        items = np.repeat([game.item for _, game in games], [len(part) for part in masked])
        out = np.empty(len(histories))
        start = 0
        while start < len(histories):
            if self.progress is not None and self.progress.cancelled:
                return None
            stop = min(start + self.rows, len(histories))
            tick = time.perf_counter()
            out[start:stop] = self._score(histories[start:stop], items[start:stop])
            rate = (time.perf_counter() - tick) / (stop - start)
            # At most double per call: one fast call on a machine that then gets busy must not become a
            # call of many seconds, during which a cancel waits.
            self.rows = int(min(self.max_rows, 2 * self.rows, max(16, self.TARGET_S / max(rate, 1e-7))))
            self.rows_done += stop - start
            self.report()
            start = stop
        return np.split(out, np.cumsum([len(part) for part in masked])[:-1])

    def _score(self, histories: list[np.ndarray], items: np.ndarray) -> np.ndarray:
        """One model call: the scores of each history's own item."""
        wanted, column = np.unique(items, return_inverse=True)
        scores = self.model.score_items(histories, wanted)
        return scores[torch.arange(len(histories)), torch.from_numpy(column)].double().numpy()


def _global_rows(row: int, history: np.ndarray, h: Explanation, a: Explanation) -> pd.DataFrame:
    single = h.items >= 0
    recency = np.array([m[-1] for m in h.members]) / max(len(history) - 1, 1)
    share = np.array([len(m) for m in a.members]) / len(history)
    return pd.DataFrame({
        "row": row, "kind": ["item"] * int(single.sum()) + ["attribute"] * len(a.labels),
        "label": [h.labels[i] for i in np.flatnonzero(single)] + list(a.labels),
        "value": np.concatenate([h.values[single], a.values]),
        "feature": np.concatenate([recency[single], share]), "item": h.item,
    })


def summarise_global(frame: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Per (kind, label): mean |SHAP|, mean SHAP, pairs it appears in, and how often it is a top-`top` reason."""
    if frame.empty:
        return pd.DataFrame(columns=["kind", "label", "mean_abs", "mean", "appears", "top_reason"])
    ranked = frame.assign(abs=frame["value"].abs())
    position = ranked.sort_values("value", ascending=False).groupby(["row", "kind"]).cumcount()
    ranked["top_reason"] = (position.reindex(ranked.index) < top) & (ranked["value"] > 0)
    out = ranked.groupby(["kind", "label"], as_index=False).agg(
        mean_abs=("abs", "mean"), mean=("value", "mean"), appears=("row", "nunique"), top_reason=("top_reason", "sum"))
    return out.sort_values(["kind", "mean_abs"], ascending=[True, False], ignore_index=True)


def _ranks(scores: torch.Tensor, item: int, seen: np.ndarray) -> np.ndarray:
    """1-based pessimistic rank of `item` in each row, the user's seen items (but not the item) excluded."""
    exclude = torch.zeros(scores.shape[1], dtype=torch.bool)
    exclude[torch.from_numpy(seen)] = True
    exclude[item] = False
    target = scores[:, item:item + 1]
    return ((scores >= target) & ~exclude).sum(dim=1).numpy()
