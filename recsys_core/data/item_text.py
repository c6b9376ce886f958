"""Item text for language-model towers: one string per item index, built from `Dataset.items`.

The text tower and the hybrid read items through these strings, so an item nobody has interacted
with yet is still scoreable as long as it has a title or any other metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Column names we recognise, in the order they are written into the text.
TITLE_COLUMNS = ("title", "name", "movie_title", "book_title")
YEAR_COLUMNS = ("year", "release_year")
ATTRIBUTE_COLUMNS = ("genres", "genre", "authors", "author", "categories", "category", "tags", "brand")
DESCRIPTION_COLUMNS = ("description", "overview", "plot", "summary", "synopsis")
MULTI_SEPARATOR = "|"


def _clean(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # years stored as floats after a merge with missing rows
    return str(value).strip()


def _first_column(items: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in items.columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _columns(items: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    lower = {c.lower(): c for c in items.columns}
    return [lower[c] for c in candidates if c in lower]


def item_titles(items: pd.DataFrame) -> list[str]:
    """Short display text per item: the title (with year when it is not already in it), else the id."""
    title_col = _first_column(items, TITLE_COLUMNS)
    year_col = _first_column(items, YEAR_COLUMNS)
    ids = items["item_id"].astype(str).tolist() if "item_id" in items.columns else [""] * len(items)
    titles = [_clean(v) for v in items[title_col]] if title_col else [""] * len(items)
    years = [_clean(v) for v in items[year_col]] if year_col else [""] * len(items)
    out = []
    for item_id, title, year in zip(ids, titles, years):
        if not title:
            title = f"item {item_id}"
        if year and f"({year})" not in title:
            title = f"{title} ({year})"
        out.append(title)
    return out


def item_texts(items: pd.DataFrame) -> list[str]:
    """Full text per item: "Title (Year). Genres: A, B. Description", skipping what is missing."""
    parts = [[t + "."] for t in item_titles(items)]
    for col in _columns(items, ATTRIBUTE_COLUMNS):
        label = col.replace("_", " ").capitalize()
        for row, value in zip(parts, items[col]):
            text = _clean(value)
            if text:
                row.append(f"{label}: {', '.join(v.strip() for v in text.split(MULTI_SEPARATOR) if v.strip())}.")
    for col in _columns(items, DESCRIPTION_COLUMNS):
        for row, value in zip(parts, items[col]):
            text = _clean(value)
            if text:
                row.append(text)
    return [" ".join(p) for p in parts]


def history_text(titles: Sequence[str], history: np.ndarray, n_items: int, separator: str = "; ") -> str:
    """The last `n_items` titles of a time-ordered history, newest first, as one query string."""
    recent = np.asarray(history)[-n_items:][::-1] if n_items > 0 else np.asarray(history)[::-1]
    return separator.join(titles[int(i)] for i in recent)
