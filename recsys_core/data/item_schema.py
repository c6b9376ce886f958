"""The one item schema, decided once at ingest and read everywhere.

Every `Dataset.items` frame has one row per item index and starts with these columns:

    item_id  str    the original id
    title    str    the title as given ("" when unknown)
    year     Int64  release / publication year (<NA> when unknown); read from "Title (1995)" when most
                    titles end that way and no year column exists
    genres   str    '|'-joined categorical attributes (genres, categories, tags); "" when none
    text     str    a free description; "" when none

then `authors` and `brand` when the metadata has them (they are written into item text), then every
other metadata column untouched. `normalise_items` is the only place that recognises column names;
`item_titles` (the label every page shows) and `item_texts` (what language models read) only read
the schema, so two pages cannot label one item differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recsys_core.data.names import normalize

ITEM_ID, TITLE, YEAR, GENRES, TEXT = "item_id", "title", "year", "genres", "text"
SCHEMA = (ITEM_ID, TITLE, YEAR, GENRES, TEXT)
MULTI_SEPARATOR = "|"
# Optional columns that also describe an item in words (after genres in item text), with their label.
TEXT_ATTRIBUTES = {GENRES: "Genres", "authors": "Authors", "brand": "Brand"}

# Metadata column names (compared after `names.normalize`) that fill each schema column, best first.
ALIASES = {
    TITLE: ("title", "name", "movietitle", "booktitle", "originaltitle", "itemname", "productname"),
    YEAR: ("year", "releaseyear", "originalpublicationyear", "publicationyear"),
    GENRES: ("genres", "genre", "categories", "category", "tags"),
    TEXT: ("text", "description", "overview", "plot", "summary", "synopsis"),
    "authors": ("authors", "author"),
    "brand": ("brand",),
}
_YEAR_IN_TITLE = r"\((\d{4})\)\s*$"


def normalise_items(meta: pd.DataFrame | None, item_ids: Sequence[object] | None = None) -> pd.DataFrame:
    """Map metadata onto the schema: one row per id of `item_ids` (in that order) when given, else per row.

    Idempotent, so a dataset saved by an older version is brought to the schema when it is loaded.
    """
    meta = pd.DataFrame({ITEM_ID: []}) if meta is None else meta
    meta = meta.assign(**{ITEM_ID: meta[ITEM_ID].astype(str)}).drop_duplicates(ITEM_ID, keep="first")
    if item_ids is not None:
        ids = pd.DataFrame({ITEM_ID: np.asarray(item_ids).astype(str)})
        meta = ids.merge(meta, on=ITEM_ID, how="left")
    meta = meta.reset_index(drop=True)
    source = _recognised_columns(meta.columns)
    out = pd.DataFrame({ITEM_ID: meta[ITEM_ID].to_numpy(dtype=object)})
    out[TITLE] = _strings(meta, source.get(TITLE))
    out[YEAR] = _years(meta, source.get(YEAR), out[TITLE])
    out[GENRES] = _multi_values(meta, source.get(GENRES))
    out[TEXT] = _strings(meta, source.get(TEXT))
    for extra in ("authors", "brand"):
        if extra in source:
            out[extra] = _multi_values(meta, source[extra])
    used = set(source.values()) | {ITEM_ID}
    for column in meta.columns:
        if column not in used and str(column) not in out.columns:
            values = meta[column]
            out[str(column)] = values.fillna("").astype(str) if _is_text(values) else values
    return out


def _recognised_columns(columns: Sequence[object]) -> dict[str, object]:
    """Schema column -> metadata column it is read from (each metadata column used once)."""
    found: dict[str, object] = {}
    for canon, aliases in ALIASES.items():
        for alias in aliases:
            hit = next((c for c in columns if normalize(c) == alias and c not in found.values() and c != ITEM_ID),
                       None)
            if hit is not None:
                found[canon] = hit
                break
    return found


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values)


def _strings(meta: pd.DataFrame, column: object) -> np.ndarray:
    if column is None:
        return np.full(len(meta), "", dtype=object)
    return meta[column].astype("string").fillna("").str.strip().to_numpy(dtype=object)


def _years(meta: pd.DataFrame, column: object, titles: pd.Series) -> pd.Series:
    if column is not None:
        years = pd.to_numeric(meta[column], errors="coerce")
    else:
        parsed = titles.astype(str).str.extract(_YEAR_IN_TITLE, expand=False)
        years = pd.to_numeric(parsed, errors="coerce") if parsed.notna().mean() >= 0.5 else pd.Series(np.nan,
                                                                                                     index=titles.index)
    years = years.where((years >= 1000) & (years <= 2999))
    return years.round().astype("Int64")


def _multi_values(meta: pd.DataFrame, column: object) -> np.ndarray:
    """'|'-joined values with the spaces around each value removed ("" when none)."""
    text = pd.Series(_strings(meta, column), dtype="string")
    parts = text.str.split(MULTI_SEPARATOR).explode().str.strip()
    parts = parts[parts.fillna("") != ""]
    joined = parts.groupby(level=0).agg(MULTI_SEPARATOR.join)
    return joined.reindex(range(len(meta)), fill_value="").astype(str).to_numpy(dtype=object)


def item_titles(items: pd.DataFrame) -> list[str]:
    """The label of every item: its title with the year when the title lacks it, else "item <id>"."""
    out = []
    years = items[YEAR] if YEAR in items.columns else pd.Series(pd.NA, index=items.index)
    for item_id, title, year in zip(items[ITEM_ID].astype(str), items[TITLE], years, strict=True):
        label = title or f"item {item_id}"
        if pd.notna(year) and f"({year})" not in label:
            label = f"{label} ({year})"
        out.append(label)
    return out


def item_labels(items: pd.DataFrame) -> list[str]:
    """The label every client shows per item: `item_titles`, with " · id <id>" added where two items would share
    one (ML-100k lists 18 films under two ids each), so a picker never offers two identical entries."""
    titles = item_titles(items)
    shared = pd.Series(titles).duplicated(keep=False).to_numpy()
    return [f"{t} · id {i}" if dup else t for t, i, dup in zip(titles, items[ITEM_ID].astype(str), shared, strict=True)]


def item_texts(items: pd.DataFrame) -> list[str]:
    """What a language model reads per item: "Title (Year). Genres: A, B. Authors: C. Description"."""
    parts = [[t + "."] for t in item_titles(items)]
    for column, label in TEXT_ATTRIBUTES.items():
        if column not in items.columns:
            continue
        for row, value in zip(parts, items[column], strict=True):
            values = [v for v in str(value).split(MULTI_SEPARATOR) if v]
            if values:
                row.append(f"{label}: {', '.join(values)}.")
    if TEXT in items.columns:
        for row, value in zip(parts, items[TEXT], strict=True):
            if value:
                row.append(str(value))
    return [" ".join(p) for p in parts]


def attribute_values(items: pd.DataFrame, column: str = GENRES) -> list[str]:
    """Sorted distinct values of a '|'-joined schema column (empty when the column is absent)."""
    if column not in items.columns:
        return []
    values = items[column].astype(str).str.split(MULTI_SEPARATOR).explode()
    return sorted(v for v in values.unique() if v)


def history_text(titles: Sequence[str], history: np.ndarray, n_items: int, separator: str = "; ") -> str:
    """The last `n_items` titles of a time-ordered history, newest first, as one query string."""
    recent = np.asarray(history)[-n_items:][::-1] if n_items > 0 else np.asarray(history)[::-1]
    return separator.join(titles[int(i)] for i in recent)
