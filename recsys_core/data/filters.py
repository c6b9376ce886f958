"""Row filters on integer-coded interactions: de-duplication, implicit threshold, k-core.

Each returns a boolean mask over rows (True = keep or True = drop, as named) so they compose
without copying the frame; all are vectorised with numpy/pandas hashing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DUPLICATE_POLICIES = ("keep_last", "keep_first", "error", "keep_all")


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 per (user, item) pair from non-negative codes."""
    return users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items.astype(np.int64)


def duplicated_rows(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Every row whose (user, item) pair occurs more than once."""
    return pd.Series(pair_keys(users, items)).duplicated(keep=False).to_numpy()


def duplicates_to_drop(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None,
                       policy: str) -> np.ndarray:
    """Rows a policy drops: all but the latest (keep_last) or earliest (keep_first) of each pair.

    'Latest' is by timestamp, ties and timestamp-less files by file order.
    """
    drop = np.zeros(len(users), dtype=bool)
    if policy == "keep_all" or len(users) == 0:
        return drop
    dup = duplicated_rows(users, items)
    if not dup.any():
        return drop
    rows = np.flatnonzero(dup)  # only repeated pairs need ordering, usually a small share
    if timestamps is not None:
        rows = rows[np.argsort(timestamps[rows], kind="stable")]
    keep = "last" if policy == "keep_last" else "first"
    extra = pd.Series(pair_keys(users, items)[rows]).duplicated(keep=keep).to_numpy()
    drop[rows[extra]] = True
    return drop


def k_core(users: np.ndarray, items: np.ndarray, keep: np.ndarray, min_user: int, min_item: int
           ) -> tuple[np.ndarray, int]:
    """Drop users with < min_user and items with < min_item interactions until none is left (fixed point)."""
    keep = keep.copy()
    rounds = 0
    if min_user <= 1 and min_item <= 1:
        return keep, rounds
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    while keep.any():
        rounds += 1
        per_user = np.bincount(users[keep], minlength=n_users)
        per_item = np.bincount(items[keep], minlength=n_items)
        bad = keep & ((per_user[users] < min_user) | (per_item[items] < min_item))
        if not bad.any():
            break
        keep &= ~bad
    return keep, rounds
