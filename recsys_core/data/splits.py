"""Train/validation/test splits over a `Dataset`'s time-ordered sequences.

A split is expressed as sequences, not frames: models train on `train` (one item-index array per
user) and are evaluated by scoring `EvalSet.histories` against `EvalSet.targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_core.data.dataset import ORDER_TIMESTAMP, TIMESTAMP, Dataset
from recsys_core.errors import ConfigError, DataError


@dataclass
class EvalSet:
    """Users to evaluate, the history each is scored from, and the held-out item(s)."""

    users: np.ndarray  # int32 user indices
    histories: list[np.ndarray]  # item indices, time order
    targets: list[np.ndarray]  # held-out item indices (one for leave-one-out)

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    kind: str
    train: list[np.ndarray]  # per user index (possibly empty)
    valid: EvalSet
    test: EvalSet
    n_items: int
    holdout: str = "last"  # which items are held out: "last" (by time), "random (seed N)", "after a time cut"

    @property
    def refittable(self) -> bool:
        """Whether each validation item has one place in its user's history (leave-one-out); a temporal split's
        validation is a set of items, in no order."""
        return self.kind == "leave_one_out"

    def train_with_validation(self) -> list[np.ndarray] | None:
        """The training sequences with each validation user's held-out item appended where it happened (what a
        refit trains on), or None where the split is not `refittable`."""
        if not self.refittable:
            return None
        train = list(self.train)
        for user, history, target in zip(self.valid.users, self.valid.histories, self.valid.targets):
            train[user] = np.concatenate([history, target])
        return train

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "holdout": self.holdout,
            "train_interactions": int(sum(len(s) for s in self.train)),
            "valid_users": len(self.valid),
            "test_users": len(self.test),
        }


def leave_one_out(ds: Dataset, min_history: int = 3, seed: int = 0) -> Split:
    """Last item of each user is test, second-to-last validation, the rest train.

    "Last" needs an order: for a dataset without one (no timestamps, no declared file order) the
    held-out items are a seeded random pick per user instead, since the file's order (often sorted by
    item id) would otherwise decide what is tested. Users with fewer than `min_history` interactions
    stay in train only, so every evaluated user has at least one training item to be scored from.
    """
    seqs = ds.sequences() if ds.is_ordered else _shuffled_sequences(ds, seed)
    lengths = np.diff(ds.indptr)
    eval_users = np.flatnonzero(lengths >= min_history).astype(np.int32)
    if len(eval_users) == 0:
        raise DataError(
            f"no user has at least {min_history} interactions, so leave-one-out has nothing to test",
            hint="load more data or lower the k-core filter",
        )
    train = [s[:-2] if len(s) >= min_history else s for s in seqs]
    valid = EvalSet(eval_users, [seqs[u][:-2] for u in eval_users], [seqs[u][-2:-1] for u in eval_users])
    test = EvalSet(eval_users, [seqs[u][:-1] for u in eval_users], [seqs[u][-1:] for u in eval_users])
    holdout = "last" if ds.is_ordered else f"random (seed {seed})"
    return Split("leave_one_out", train, valid, test, ds.n_items, holdout)


def _shuffled_sequences(ds: Dataset, seed: int) -> list[np.ndarray]:
    """Each user's items in a seeded random order (one vectorised sort), so "last" is a random pick."""
    users = np.repeat(np.arange(ds.n_users), np.diff(ds.indptr))
    keys = np.random.default_rng(seed).random(len(users))
    return np.split(ds.seq_items[np.lexsort((keys, users))], ds.indptr[1:-1])


def temporal_split(ds: Dataset, test_fraction: float = 0.1, valid_fraction: float = 0.1) -> Split:
    """Global time cut: interactions after the (1 - test_fraction) time quantile are test.

    Validation is a second cut just before it. Each evaluated user is scored from everything
    they did before the cut, against every item they interacted with after it.
    """
    if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1 - test_fraction:
        raise ConfigError(f"bad split fractions test={test_fraction}, valid={valid_fraction}",
                          hint="use fractions between 0 and 1 whose sum is below 1")
    if ds.order != ORDER_TIMESTAMP:
        raise ConfigError(f"the temporal split needs timestamps, and {ds.name!r} has none (order: {ds.order})",
                          hint="use leave-one-out, or load the data with its timestamp column")
    ts = ds.interactions[TIMESTAMP].to_numpy()
    t_test = np.quantile(ts, 1 - test_fraction)
    t_valid = np.quantile(ts, 1 - test_fraction - valid_fraction)
    seqs = ds.sequences()
    times = np.split(ts, ds.indptr[1:-1])
    train = [s[t < t_valid] for s, t in zip(seqs, times)]
    valid = _window(seqs, times, t_valid, t_test)
    test = _window(seqs, times, t_test, np.inf)
    if len(test) == 0:
        raise DataError("no user has history both before and after the temporal cut",
                        hint="use leave-one-out, or a larger test fraction")
    return Split("temporal", train, valid, test, ds.n_items, "after a time cut")


def _window(seqs: list[np.ndarray], times: list[np.ndarray], start: float, end: float) -> EvalSet:
    users, hists, targets = [], [], []
    for u, (s, t) in enumerate(zip(seqs, times)):
        hist = s[t < start]
        target = np.unique(s[(t >= start) & (t < end)])
        if len(hist) and len(target):
            users.append(u)
            hists.append(hist)
            targets.append(target)
    return EvalSet(np.asarray(users, dtype=np.int32), hists, targets)
