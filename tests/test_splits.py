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


# ---- ties: equal timestamps in a sorted file ---------------------------------------------------------


def _daily_log(seed: int = 0) -> pd.DataFrame:
    """Ratings stamped by the day (so a user's last few ratings often share a timestamp), as exports are."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(200):
        items = rng.choice(np.arange(1, 301), size=12, replace=False)
        days = np.sort(rng.integers(0, 4, size=12))
        rows += [(u + 1, int(i), int(rng.integers(1, 6)), 1_300_000_000 + 86_400 * int(d)) for i, d in zip(items, days)]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def _load(frame: pd.DataFrame):
    from recsys_core.data import load_dataset

    return load_dataset(frame.to_csv(index=False).encode(), "ratings.csv")


def _held_out_highest_id(ds) -> float:
    """Share of users whose last two tie and whose held-out item is the highest id of their last timestamp."""
    ts = np.split(ds.interactions["timestamp"].to_numpy(), ds.indptr[1:-1])
    split, hits, tied = leave_one_out(ds), 0, 0
    for k, u in enumerate(split.test.users):
        last = ds.history(u)[ts[u] == ts[u][-1]]
        if len(last) >= 2:
            tied += 1
            hits += int(ds.item_ids[split.test.targets[k][0]]) == max(int(ds.item_ids[i]) for i in last)
    return hits / tied


def test_ties_listed_in_item_id_order_are_broken_by_the_seeded_random_rule() -> None:
    log = _daily_log()
    ds, report = _load(log.sort_values(["user", "timestamp", "item"]))  # the trap: ties in item-id order
    assert ds.ties == {"rule": "seeded random", "sorted_by": "item id (as a number)", "seed": 0}
    assert 0.2 < _held_out_highest_id(ds) < 0.6  # file order held out the highest id of every tie (1.0)
    text = "\n".join(report.lines())
    assert "listed sorted by item id (as a number)" in text and "seeded random order (seed 0)" in text
    again, _ = _load(log.sort_values(["user", "timestamp", "item"]))
    assert np.array_equal(again.seq_items, ds.seq_items)  # seeded: the same file gives the same split
    down, _ = _load(log.sort_values(["user", "timestamp", "item"], ascending=[True, True, False]))
    assert down.ties["rule"] == "seeded random"
    by_rating, _ = _load(log.sort_values(["user", "timestamp", "rating"], kind="stable"))
    assert by_rating.ties["sorted_by"] == "rating"


def test_ties_in_an_unsorted_file_keep_the_file_order_and_the_report_says_so() -> None:
    log = _daily_log().sample(frac=1.0, random_state=1)  # rows as they were logged: no order within a timestamp
    ds, report = _load(log)
    assert ds.ties == {"rule": "file order"}
    assert "here the file's order is kept" in "\n".join(report.lines())
    few = _daily_log().sort_values(["user", "timestamp", "item"])
    few["timestamp"] += np.arange(len(few))  # every tie broken by the file ...
    few.loc[few.index[:3], "timestamp"] = few["timestamp"].iat[0]  # ... but three rows: too few to call it sorted
    assert _load(few)[0].ties == {"rule": "file order"}
