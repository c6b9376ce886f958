"""Item metadata files: MovieLens movies.dat / u.item, MovieTweetings movies.dat, or any table with an id.

Output: one row per item in the item schema (`item_schema`): item_id, title, year, genres, text and
any other columns of the file. Only the formats' fixed layouts are decided here; column names are
recognised by `item_schema.normalise_items`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.data.item_schema import normalise_items
from recsys_core.data.mapping import is_headerless
from recsys_core.data.names import name_score, normalize
from recsys_core.data.read import RawTable, open_member, parse_blob
from recsys_core.data.source import DEFAULT_MAX_BYTES, Source, load_blob
from recsys_core.data.validate import ids_as_strings
from recsys_core.errors import DataError

# u.genre order of the 19 flag columns that end each u.item line.
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


def read_items(source: Source, filename: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """Read an item metadata file (or the metadata member of a zip) into an `item_id`-keyed frame."""
    blob = open_member(load_blob(source, filename, max_bytes=max_bytes), "items", max_bytes=max_bytes)
    return items_from_raw(parse_blob(blob))


def items_from_raw(raw: RawTable) -> pd.DataFrame:
    frame = raw.frame
    if is_headerless(frame):
        out = _headerless(raw)
    else:
        out = _with_header(raw)
    return normalise_items(out)


def _is_flags(block: pd.DataFrame) -> bool:
    return bool(block.astype(str).isin(["0", "1"]).to_numpy().all())


def _headerless(raw: RawTable) -> pd.DataFrame:
    f = raw.frame
    n = f.shape[1]
    ids = ids_as_strings(raw, 0, "item")
    if n == 24 and _is_flags(f.iloc[:100, 5:]):  # MovieLens 100K u.item
        flags = f.iloc[:, 5:].astype(str).eq("1").to_numpy()
        return pd.DataFrame({"item_id": ids, "title": f[1].astype(str), "genres": _join_flags(flags),
                             "release_date": f[2].astype(str), "imdb_url": f[4].astype(str)})
    out = pd.DataFrame({"item_id": ids})
    if n >= 2:
        out["title"] = f[1].astype(str).to_numpy()
    if n == 3 and raw.delimiter == "::":  # movies.dat: id::Title (Year)::Genre|Genre
        out["genres"] = f[2].astype(str).to_numpy()
    else:
        for j in range(2, n):
            out[f"column_{j + 1}"] = f[j].to_numpy()
    return out


def _join_flags(flags: np.ndarray) -> np.ndarray:
    """19 one-hot genre columns -> 'Action|Comedy' ('unknown' is the absence of a genre)."""
    names = np.array([g + "|" if g != "unknown" else "" for g in ML100K_GENRES], dtype=object)
    joined = flags.astype(object) @ names if flags.size else np.array([], dtype=object)
    return np.array([s.rstrip("|") if isinstance(s, str) else "" for s in joined], dtype=object)


def _with_header(raw: RawTable) -> pd.DataFrame:
    """The id column as `item_id`, every other column as it is (`normalise_items` names them)."""
    f = raw.frame
    id_col = _id_column(raw)
    out = pd.DataFrame({"item_id": ids_as_strings(raw, id_col, "item")})
    for c in f.columns:
        if c != id_col and str(c) not in out.columns:
            out[str(c)] = f[c].to_numpy()
    return out


def _id_column(raw: RawTable):
    cols = list(raw.frame.columns)
    for test in (lambda c: name_score(c, "item") == 2, lambda c: normalize(c) == "id",
                 lambda c: name_score(c, "item") == 1):
        hits = [c for c in cols if test(c)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DataError(f"several columns could be the item id: {', '.join(map(str, hits))}", file=raw.file,
                            hint="keep one id column (e.g. item_id or movieId) in the metadata file")
    raise DataError(f"no item id column in the metadata file; its columns are: {', '.join(map(str, cols))}",
                    file=raw.file, line=1,
                    hint="name the id column item_id, movieId, book_id or id, matching the ids in the ratings file")
