"""Turn a RawTable + ColumnMapping into canonical columns: user, item (strings), rating, timestamp.

Every check is vectorised; the slow part (finding line numbers and examples) only runs once a
problem is known to exist.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.data.dataset import COUNT, ITEM, RATING, TIMESTAMP, USER, dictionary_codes, sorted_vocabulary
from recsys_core.data.mapping import ColumnMapping
from recsys_core.data.read import RawTable
from recsys_core.errors import DataError

_EXAMPLES = 5
# Magnitude of the largest |timestamp| -> divisor to seconds (s, ms, us, ns).
_UNITS = [(1e11, 1, "seconds"), (1e14, 1_000, "milliseconds"), (1e17, 1_000_000, "microseconds"),
          (float("inf"), 1_000_000_000, "nanoseconds")]


def to_interactions(raw: RawTable, mapping: ColumnMapping) -> tuple[pd.DataFrame, list[str]]:
    """Canonical interaction frame plus plain-word notes on how values were read."""
    _check_columns(raw, mapping)
    notes: list[str] = []
    out = {}
    for key, column, role in ((USER, mapping.user, "user"), (ITEM, mapping.item, "item")):
        out[key], trimmed = clean_id_codes(raw, column, role)
        if trimmed:
            notes.append(f"{trimmed} {role} id(s) had spaces around them, removed (otherwise ids are kept exactly "
                         "as written: '007' and '7' are different ids)")
    if mapping.rating is not None:
        out[RATING] = _ratings(raw, mapping.rating)
        if (negative := out[RATING] < 0).any():
            notes.append(_negative_note(raw, negative, out[RATING]))
    if mapping.count is not None:
        out[COUNT] = _counts(raw, mapping.count)
    if mapping.timestamp is not None:
        out[TIMESTAMP], note = _timestamps(raw, mapping.timestamp)
        notes.append(note)
    ignored = [str(c) for c in raw.frame.columns if c not in mapping.as_dict().values()]
    if ignored:
        notes.append(f"ignored columns: {', '.join(ignored[:10])}" + (" ..." if len(ignored) > 10 else ""))
    return pd.DataFrame(out, copy=False), notes


def _check_columns(raw: RawTable, mapping: ColumnMapping) -> None:
    cols = list(raw.frame.columns)
    for role, col in mapping.as_dict().items():
        if col is not None and col not in cols:
            raise DataError(f"the {role} column '{col}' is not in the file; its columns are: "
                            f"{', '.join(map(str, cols))}", file=raw.file, column=str(col),
                            hint="choose one of the listed columns in the column mapping")
    used = [c for c in mapping.as_dict().values() if c is not None]
    if len(used) != len(set(used)):
        raise DataError(f"the same column is mapped to two roles: {mapping.as_dict()}", file=raw.file,
                        hint="map each role to a different column")


def _fail(raw: RawTable, column, bad: np.ndarray, what: str, hint: str) -> DataError:
    """DataError naming the count, the first line and a few example values of bad rows."""
    rows = np.flatnonzero(bad)
    lines = raw.line_of(rows[:_EXAMPLES])
    values = raw.frame[column].iloc[rows[:_EXAMPLES]].tolist()
    examples = [f"{raw.row_word} {ln}: {v!r}" for ln, v in zip(lines, values)]
    return DataError(f"{len(rows)} row(s) have {what}", file=raw.file, line=int(lines[0]), column=str(column),
                     examples=examples, hint=hint)


def _as_arrow(series: pd.Series) -> pa.ChunkedArray | pa.Array:
    return pa.array(series) if not isinstance(series.dtype, np.dtype) else pa.array(series.to_numpy())


def ids_as_strings(raw: RawTable, column, role: str) -> pd.Series:
    """Ids as strings, without surrounding whitespace (see `clean_ids`)."""
    return clean_ids(raw, column, role)[0]


def clean_ids(raw: RawTable, column, role: str) -> tuple[pd.Series, int]:
    """Ids as strings with surrounding whitespace removed on every row, and how many were changed.

    Integral floats (JSON ids next to nulls) lose their '.0'; nothing else is normalised, so '007'
    and '7' stay two ids."""
    codes, trimmed = clean_id_codes(raw, column, role)
    return pd.Series(np.asarray(codes.cat.categories, dtype=object)[codes.cat.codes.to_numpy()], dtype="str"), trimmed


def clean_id_codes(raw: RawTable, column, role: str) -> tuple[pd.Series, int]:
    """`clean_ids` as a Categorical over the sorted distinct ids: each id string is hashed once (Arrow
    dictionary encoding) and only the distinct ids are stripped, checked and sorted, so 20M rows cost one
    pass and no per-row string copies. The trimmed count and errors are those of stripping every row."""
    s = _id_column(raw, column, role)
    if isinstance(s.dtype, pd.CategoricalDtype):  # dictionary-encoded Parquet: its distinct values, never a
        raw_codes = s.cat.codes.to_numpy().astype(np.int32)  # string per row (16 KB of them made 8 GB)
        dictionary = pa.array(s.cat.categories.astype(str).to_numpy(dtype=object), type=pa.string())
    else:
        raw_codes, dictionary = dictionary_codes(_id_text(s))
    per_value = np.bincount(raw_codes, minlength=len(dictionary))
    stripped = pc.utf8_trim_whitespace(dictionary)
    changed = pc.not_equal(stripped, dictionary).to_numpy(zero_copy_only=False)
    empty = (pc.utf8_length(stripped).to_numpy(zero_copy_only=False) == 0) & (per_value > 0)
    if empty.any():
        raise _fail(raw, column, empty[raw_codes], f"an empty {role} id",
                    f"every row needs a {role} id; delete or fill those lines")
    codes, ids = sorted_vocabulary(raw_codes, stripped)
    categories = pd.Index(ids, dtype=object)
    return pd.Series(pd.Categorical.from_codes(codes, categories=categories)), int(per_value[changed].sum())


def _id_column(raw: RawTable, column, role: str) -> pd.Series:
    """The id column, refusing missing ids; integral floats as integers."""
    s = raw.frame[column]
    if pd.api.types.is_float_dtype(s.dtype):
        vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(vals).any():
            raise _fail(raw, column, np.isnan(vals), f"an empty {role} id", f"every row needs a {role} id")
        if np.all(vals == np.round(vals)):
            s = pd.Series(vals.astype(np.int64))
    missing = s.isna().to_numpy()
    if missing.any():
        raise _fail(raw, column, missing, f"an empty {role} id", f"every row needs a {role} id; delete or "
                    "fill those lines" if _is_text(s) else f"every row needs a {role} id")
    return s


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s.dtype) and not isinstance(s.dtype, np.dtype)


def _id_text(s: pd.Series) -> pa.Array | pa.ChunkedArray:
    if isinstance(s.array, pd.arrays.ArrowStringArray):
        data = s.array.__arrow_array__()
        return data if data.type == pa.string() else data.cast(pa.string())
    return pa.array(s.astype(str).to_numpy(dtype=object), type=pa.string())


def _numbers(raw: RawTable, column) -> tuple[np.ndarray, np.ndarray]:
    """Float values and a mask of entries that are not finite numbers."""
    s = raw.frame[column]
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            vals = pc.cast(_as_arrow(s.astype(str)), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            vals = pd.to_numeric(s.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    vals = np.asarray(vals, dtype=np.float64)
    return vals, ~np.isfinite(vals)


def _ratings(raw: RawTable, column) -> np.ndarray:
    vals, bad = _numbers(raw, column)
    if bad.any():
        raise _fail(raw, column, bad, "a rating that is not a number",
                    "ratings/weights must be numbers like 4 or 3.5; fix those lines or map no rating column")
    return vals


def _negative_note(raw: RawTable, negative: np.ndarray, ratings: np.ndarray) -> str:
    """Negative ratings are legal (a -3..3 scale) but change what 'chose' means: said, never silent."""
    first = int(raw.line_of(np.flatnonzero(negative)[:1])[0])
    return (f"{int(negative.sum())} ratings are negative (lowest {ratings.min():g}, first at {raw.row_word} {first}): "
            "kept as given, and every model learns from which items a user rated, not from the rating's sign, so a "
            "negative rating counts as a choice; if negative means dislike, reload with implicit feedback and a "
            "threshold (e.g. keep rating >= 0), or map no rating column")


def _counts(raw: RawTable, column) -> np.ndarray:
    vals, bad = _numbers(raw, column)
    if bad.any():
        raise _fail(raw, column, bad, "a count that is not a number",
                    "counts (plays, clicks, purchases) must be numbers like 3 or 12; fix those lines or map no count")
    negative = vals < 0
    if negative.any():
        raise _fail(raw, column, negative, "a negative count",
                    "a count says how often; if the column is a score that can be negative, map it as the rating")
    return vals


def _timestamps(raw: RawTable, column) -> tuple[np.ndarray, str]:
    """int64 unix seconds from unix s/ms/us/ns numbers, or ISO / common date strings."""
    s = raw.frame[column]
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return _datetimes_to_seconds(raw, column, s), "timestamps read as dates"
    vals, bad = _numbers(raw, column)
    huge = np.abs(np.nan_to_num(vals)) >= 9e18  # past int64 nanoseconds: no unit makes this a time
    if huge.any():
        raise _fail(raw, column, huge, "a timestamp too large to be a time",
                    "use unix seconds, milliseconds, or ISO dates like 2013-02-28")
    if not bad.any():
        top = float(np.abs(vals).max()) if len(vals) else 0.0
        _, divisor, unit = next(u for u in _UNITS if top < u[0])
        return np.floor_divide(vals, divisor).astype(np.int64), f"timestamps read as unix {unit}"
    if bad.all() or pd.api.types.is_string_dtype(s.dtype) and bad.mean() > 0.5:
        return _datetimes_to_seconds(raw, column, s), "timestamps read as dates (UTC when no zone is given)"
    raise _fail(raw, column, bad, "a timestamp that is not a number",
                "use unix seconds (or milliseconds) or ISO dates like 2013-02-28T14:03:00 throughout")


def _datetimes_to_seconds(raw: RawTable, column, s: pd.Series) -> np.ndarray:
    if not pd.api.types.is_datetime64_any_dtype(s.dtype):
        text = s.astype(str).str.strip()
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
        if parsed.isna().any():
            retry = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
            parsed = parsed.fillna(retry) if retry.notna().sum() > parsed.notna().sum() else parsed
        s = parsed
    bad = s.isna().to_numpy()
    if bad.any():
        raise _fail(raw, column, bad, "a timestamp that cannot be read as a date",
                    "use ISO dates like 2013-02-28 or 2013-02-28T14:03:00, or unix seconds, in every row")
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.to_numpy().astype("datetime64[s]").astype(np.int64)
