"""Row filters on integer-coded interactions: de-duplication, implicit threshold, k-core.

Each returns a boolean mask over rows (True = keep or True = drop, as named) so they compose
without copying the frame; all are vectorised with numpy.
"""

from __future__ import annotations

import numpy as np

DUPLICATE_POLICIES = ("keep_last", "keep_first", "error", "keep_all")


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 per (user, item) pair from non-negative codes."""
    return users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items.astype(np.int64)


def _repeated_pairs(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose pair occurs more than once, grouped by pair (file order inside a group), and their keys.

    Sort-based: on 10M nearly unique keys one argsort is ~2x faster than hashing them.
    """
    keys = pair_keys(users, items)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    if not same.any():
        return order[:0], keys[:0]
    repeated = np.zeros(len(keys), dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    return order[repeated], sorted_keys[repeated]


def duplicated_rows(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Every row whose (user, item) pair occurs more than once."""
    out = np.zeros(len(users), dtype=bool)
    if len(users):
        out[_repeated_pairs(users, items)[0]] = True
    return out


def duplicates_to_drop(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None,
                       policy: str) -> np.ndarray:
    """Rows a policy drops: all but the latest (keep_last) or earliest (keep_first) of each pair.

    'Latest' is by timestamp, ties and timestamp-less files by file order.
    """
    drop = np.zeros(len(users), dtype=bool)
    if policy == "keep_all" or len(users) == 0:
        return drop
    rows, keys = _repeated_pairs(users, items)  # usually a small share of all rows
    if not len(rows):
        return drop
    if timestamps is not None:
        by_time = np.lexsort((rows, timestamps[rows], keys))
        rows, keys = rows[by_time], keys[by_time]
    new_group = np.concatenate([[True], keys[1:] != keys[:-1]])
    keeper = np.concatenate([new_group[1:], [True]]) if policy == "keep_last" else new_group
    drop[rows[~keeper]] = True
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
