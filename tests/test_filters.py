"""filters: duplicate handling by time, k-core fixed point, on integer codes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_core.data.filters import duplicated_rows, duplicates_to_drop, k_core


def test_duplicated_rows_marks_every_repeat() -> None:
    users = np.array([0, 0, 1, 0, 1])
    items = np.array([5, 6, 5, 5, 7])
    assert duplicated_rows(users, items).tolist() == [True, False, False, True, False]


def test_keep_last_uses_time_not_file_order() -> None:
    users = np.array([0, 0, 0, 1])
    items = np.array([3, 3, 3, 3])
    ts = np.array([50, 10, 30, 5])
    drop = duplicates_to_drop(users, items, ts, "keep_last")
    assert drop.tolist() == [False, True, True, False]  # row 0 is the latest (t=50)
    drop = duplicates_to_drop(users, items, ts, "keep_first")
    assert drop.tolist() == [True, False, True, False]  # row 1 is the earliest (t=10)


def test_ties_and_no_timestamps_fall_back_to_file_order() -> None:
    users, items = np.array([0, 0, 0]), np.array([1, 1, 1])
    assert duplicates_to_drop(users, items, None, "keep_last").tolist() == [True, True, False]
    assert duplicates_to_drop(users, items, np.array([7, 7, 7]), "keep_first").tolist() == [False, True, True]
    assert not duplicates_to_drop(users, items, None, "keep_all").any()


def test_k_core_iterates_until_stable() -> None:
    # A chain: user 3 has one rating -> goes; then item 2 has one -> goes; then user 2 has one -> goes.
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 1, 1, 2, 2])
    keep, rounds = k_core(users, items, np.ones(7, dtype=bool), min_user=2, min_item=2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert rounds == 4  # three removing rounds and one that finds nothing to remove
    kept_u, kept_i = users[keep], items[keep]
    assert (np.bincount(kept_u)[np.unique(kept_u)] >= 2).all()
    assert (np.bincount(kept_i)[np.unique(kept_i)] >= 2).all()


def test_k_core_is_a_no_op_at_one() -> None:
    keep, rounds = k_core(np.array([0, 1]), np.array([0, 1]), np.array([True, False]), 1, 1)
    assert keep.tolist() == [True, False] and rounds == 0


def test_k_core_can_empty_everything() -> None:
    keep, _ = k_core(np.array([0, 1, 2]), np.array([0, 1, 2]), np.ones(3, dtype=bool), 2, 1)
    assert not keep.any()


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 3)), max_size=40),
       policy=st.sampled_from(["keep_last", "keep_first"]), with_time=st.booleans())
def test_dedupe_matches_a_plain_reference(rows, policy, with_time) -> None:
    users = np.array([r[0] for r in rows], dtype=np.int64)
    items = np.array([r[1] for r in rows], dtype=np.int64)
    ts = np.array([r[2] for r in rows], dtype=np.int64) if with_time else None
    drop = duplicates_to_drop(users, items, ts, policy)
    expected = np.zeros(len(rows), dtype=bool)
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for k, (u, i, t) in enumerate(rows):
        rank = (t if with_time else 0, k)
        old = best.get((u, i))
        if old is None or (rank > old if policy == "keep_last" else rank < old):
            best[(u, i)] = rank
    keepers = {rank[1] for rank in best.values()}
    expected[[k for k in range(len(rows)) if k not in keepers]] = True
    assert drop.tolist() == expected.tolist()
    assert duplicated_rows(users, items).sum() == sum(
        1 for r in rows if sum(1 for q in rows if q[:2] == r[:2]) > 1)
