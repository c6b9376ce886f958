"""Splits: leave-one-out and temporal hold out the right items and never leak the future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import DataError, build_dataset, leave_one_out, temporal_split
from recsys_core.errors import ConfigError


def _dataset(lengths: list[int]):
    rows = [(f"u{u}", f"i{(u + k) % 7}", 1000 * u + k) for u, n in enumerate(lengths) for k in range(n)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="t")


def test_leave_one_out_holds_out_last_two() -> None:
    ds = _dataset([5, 3, 2, 4])
    split = leave_one_out(ds)
    seqs = ds.sequences()
    assert split.test.users.tolist() == [0, 1, 3]  # user 2 has only 2 interactions
    for k, u in enumerate(split.test.users):
        assert split.test.targets[k].tolist() == [seqs[u][-1]]
        assert split.test.histories[k].tolist() == seqs[u][:-1].tolist()
        assert split.valid.targets[k].tolist() == [seqs[u][-2]]
        assert split.valid.histories[k].tolist() == seqs[u][:-2].tolist()
        assert split.train[u].tolist() == seqs[u][:-2].tolist()
    assert split.train[2].tolist() == seqs[2].tolist()  # short users train on everything
    assert split.describe() == {"kind": "leave_one_out", "holdout": "last", "train_interactions": 3 + 1 + 2 + 2,
                                "valid_users": 3, "test_users": 3}


def test_leave_one_out_without_enough_history() -> None:
    with pytest.raises(DataError, match="no user has at least 3 interactions"):
        leave_one_out(_dataset([2, 1, 2]))


def test_temporal_split_respects_time() -> None:
    rows = [(f"u{u}", f"i{(u * 3 + t) % 11}", t) for u in range(6) for t in range(0, 100, 5)]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="t")
    split = temporal_split(ds, test_fraction=0.2, valid_fraction=0.1)
    ts = ds.interactions["timestamp"].to_numpy()
    t_test, t_valid = np.quantile(ts, 0.8), np.quantile(ts, 0.7)
    times = np.split(ts, ds.indptr[1:-1])
    seqs = ds.sequences()
    for u in range(ds.n_users):
        assert split.train[u].tolist() == seqs[u][times[u] < t_valid].tolist()
    for k, u in enumerate(split.test.users):
        assert split.test.histories[k].tolist() == seqs[u][times[u] < t_test].tolist()
        assert set(split.test.targets[k].tolist()) == set(seqs[u][times[u] >= t_test].tolist())
    for k, u in enumerate(split.valid.users):
        window = (times[u] >= t_valid) & (times[u] < t_test)
        assert set(split.valid.targets[k].tolist()) == set(seqs[u][window].tolist())
    assert len(split.test) == ds.n_users


def test_temporal_split_errors() -> None:
    ds = _dataset([4, 4])
    with pytest.raises(ConfigError, match="bad split fractions"):
        temporal_split(ds, test_fraction=0.6, valid_fraction=0.5)
    # Each user lives entirely on one side of the cut: nobody has both history and future.
    early_late = pd.DataFrame({"user": ["a"] * 9 + ["b"], "item": [f"i{k}" for k in range(10)],
                               "timestamp": list(range(9)) + [100]})
    with pytest.raises(DataError, match="no user has history both before and after"):
        temporal_split(build_dataset(early_late, name="t"), test_fraction=0.1, valid_fraction=0.0)
