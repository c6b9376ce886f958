"""Which column is the user, the item, the rating or count, and the timestamp.

By header name when there is a header (`userId`, `customer_id`, `book_rating`, `play_count`, ...);
by position and content when there is none (MovieLens order: user, item, rating, timestamp), where
a numeric column of whole numbers running far past any rating scale is a count, not a rating.
`reasons` says why, for the validation report. The user can always override: pages show
`candidates` per role in select boxes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_core.data.names import EXAMPLE_NAMES, ROLES, name_score
from recsys_core.data.sniff import is_number
from recsys_core.errors import DataError

_SAMPLE = 1000
_MIN_UNIX_SECONDS = 1e8  # 1973: below this a number is a rating or a count, not a time
_MAX_RATING = 10  # the widest common rating scale (0-10, MovieTweetings); whole numbers beyond it are counts


@dataclass
class ColumnMapping:
    """Frame column for each role; rating, count and timestamp are optional."""

    user: Hashable
    item: Hashable
    rating: Hashable | None = None
    timestamp: Hashable | None = None
    count: Hashable | None = None
    # Columns offered per role, best guess first (for UI select boxes).
    candidates: dict[str, list] = field(default_factory=dict, compare=False, repr=False)
    # Why a column got its role when that was decided from its content (for the validation report).
    reasons: list[str] = field(default_factory=list, compare=False, repr=False)

    def as_dict(self) -> dict[str, Hashable | None]:
        return {role: getattr(self, role) for role in ROLES}

    @classmethod
    def coerce(cls, value: ColumnMapping | Mapping) -> ColumnMapping:
        """Accept a ColumnMapping or a plain {'user': ..., 'item': ...} dict."""
        if isinstance(value, ColumnMapping):
            return value
        unknown = set(value) - set(ROLES) - {"candidates"}
        if unknown or "user" not in value or "item" not in value:
            raise DataError(f"a column mapping needs keys user and item (optional rating, count, timestamp); "
                            f"got {sorted(map(str, value))}", hint="e.g. {'user': 'userId', 'item': 'movieId'}")
        return cls(**{k: value[k] for k in ROLES if k in value})


def is_headerless(frame: pd.DataFrame) -> bool:
    """Headerless text tables get integer column labels 0..n-1 (the pandas convention)."""
    return len(frame.columns) > 0 and all(isinstance(c, (int, np.integer)) for c in frame.columns)


def mapping_candidates(frame: pd.DataFrame) -> dict[str, list]:
    """Every column per role, ordered best match first; never raises (for select boxes)."""
    cols = list(frame.columns)
    out = {}
    for role in ROLES:
        if is_headerless(frame):
            preferred = {"user": 0, "item": 1, "rating": 2, "count": 2, "timestamp": 3}[role]
            out[role] = sorted(cols, key=lambda c, p=preferred: (c != p, c))
        else:
            out[role] = sorted(cols, key=lambda c, r=role: -name_score(c, r))
    return out


def infer_mapping(frame: pd.DataFrame, *, file: str | None = None) -> ColumnMapping:
    """Guess the role of each column; raises DataError when user/item are missing or ambiguous."""
    if frame.shape[1] < 2:
        raise DataError(f"the table has {frame.shape[1]} column(s); at least a user and an item column are needed",
                        file=file, hint="use a file with one 'user, item[, rating, timestamp]' interaction per line")
    found = _by_position(frame, file) if is_headerless(frame) else _by_name(frame, file)
    found.candidates = mapping_candidates(frame)
    return found


def _by_name(frame: pd.DataFrame, file: str | None) -> ColumnMapping:
    chosen: dict[str, Hashable | None] = {}
    for role in ROLES:
        scores = {c: name_score(c, role) for c in frame.columns}
        best = max(scores.values())
        tied = [c for c, s in scores.items() if s == best and best > 0]
        if len(tied) > 1:
            raise DataError(
                f"several columns could be the {role}: {', '.join(map(str, tied))}",
                file=file, column=str(tied[0]),
                hint=f"choose the {role} column in the column mapping, or rename the others",
            )
        chosen[role] = tied[0] if tied else None
    for role in ("user", "item"):
        if chosen[role] is None:
            raise DataError(
                f"no {role} column found; the columns are: {', '.join(map(str, frame.columns))}",
                file=file, line=1,
                hint=f"name the {role} column like {EXAMPLE_NAMES[role]}, or choose it in the column mapping",
            )
    used = [c for c in chosen.values() if c is not None]
    if len(used) != len(set(used)):
        raise DataError(f"one column matched two roles: {chosen}", file=file,
                        hint="choose the columns in the column mapping")
    return ColumnMapping(**chosen)


def _kind(values: pd.Series) -> str:
    """'number', 'date' or 'text' for a sample of one column."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return "number"
    text = values.astype(str)
    text = text[text.str.strip() != ""]
    if len(text) and all(is_number(v) for v in text):
        return "number"
    if len(text) and pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True).notna().all():
        return "date"
    return "text"


def _is_time(values: pd.Series) -> bool:
    kind = _kind(values)
    if kind == "date":
        return True
    if kind != "number":
        return False
    nums = pd.to_numeric(values, errors="coerce")
    return bool(nums.notna().all() and nums.min() >= _MIN_UNIX_SECONDS)


def _amount(frame: pd.DataFrame, column: Hashable, mapping: ColumnMapping) -> ColumnMapping:
    """Map a headerless numeric column as a rating or a count, from all its values, saying why."""
    values = pd.to_numeric(frame[column], errors="coerce").dropna().to_numpy(dtype=np.float64)
    label = f"column {column + 1}" if isinstance(column, (int, np.integer)) else f"column {column!r}"
    if not len(values):
        mapping.rating = column
        return mapping
    lo, hi = float(values.min()), float(values.max())
    whole = bool(np.all(values == np.round(values)))
    if whole and lo >= 0 and hi > _MAX_RATING:
        mapping.count = column
        mapping.reasons.append(
            f"{label} read as a count, not a rating: whole numbers from {lo:,.0f} to {hi:,.0f} (median "
            f"{float(np.median(values)):,.0f}), beyond any rating scale; choose 'rating' in the mapping if it is one")
    else:
        mapping.rating = column
        mapping.reasons.append(f"{label} read as a rating: numbers from {lo:g} to {hi:g}; choose 'count' in the "
                               "mapping if it counts plays, clicks or purchases")
    return mapping


def _by_position(frame: pd.DataFrame, file: str | None) -> ColumnMapping:
    n = frame.shape[1]
    if n > 4:
        raise DataError(
            f"the file has no header line and {n} columns, so it is unclear which column is the user, item, "
            "rating and timestamp",
            file=file, line=1,
            hint="add a header line naming the columns (e.g. user,item,rating,timestamp) "
                 "or choose the columns in the column mapping",
        )
    sample = frame.head(_SAMPLE)
    cols = list(frame.columns)
    if n == 2:
        return ColumnMapping(cols[0], cols[1])
    third_time, third_num = _is_time(sample[cols[2]]), _kind(sample[cols[2]]) == "number"
    if n == 3:
        if third_time:
            return ColumnMapping(cols[0], cols[1], timestamp=cols[2])
        if third_num:
            return _amount(frame, cols[2], ColumnMapping(cols[0], cols[1]))
    else:
        fourth_time, fourth_num = _is_time(sample[cols[3]]), _kind(sample[cols[3]]) == "number"
        if third_num and (fourth_time or fourth_num) and not third_time:
            # MovieLens order: user, item, rating, timestamp
            return _amount(frame, cols[2], ColumnMapping(cols[0], cols[1], timestamp=cols[3]))
        if fourth_num and third_time and not fourth_time:
            return _amount(frame, cols[3], ColumnMapping(cols[0], cols[1], timestamp=cols[2]))
    raise DataError(
        "the file has no header line and its columns do not follow the order user, item, rating, timestamp "
        "(the rating must be a number, the timestamp a unix time or a date)",
        file=file, line=1, examples=[", ".join(map(str, row)) for row in sample.head(3).itertuples(index=False)],
        hint="add a header line naming the columns (e.g. user,item,rating,timestamp) "
             "or choose the columns in the column mapping",
    )
