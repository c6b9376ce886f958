"""Rebuild the built-in demo dataset (`assets/demo/`) from MovieTweetings snapshot-100K.

    python bench/build_demo.py            # reads ../shared/data, writes assets/demo
    python bench/build_demo.py --k 5 --source PATH --out DIR

Steps: read ratings and movies (IMDb ids kept as strings), keep the k-core (every user and every
item has >= k ratings, iterated to a fixed point), renumber users 1..n by their original id so no
upstream user id survives, parse `Title (Year)` into title + year, write Parquet (zstd), copy the
MIT LICENSE and write a README with the citation and the counts. Deterministic: same input, same files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "movietweetings"
DEFAULT_OUT = REPO / "assets" / "demo"
SNAPSHOT = "snapshot-100K"
TITLE_YEAR = re.compile(r"^(?P<title>.*\S)\s+\((?P<year>\d{4})\)$")

CITATION = (
    'Dooms, S., De Pessemier, T., Martens, L. "MovieTweetings: a Movie Rating Dataset Collected From '
    'Twitter". Workshop on Crowdsourcing and Human Computation for Recommender Systems (CrowdRec) '
    "at RecSys 2013."
)
SOURCE_URL = "https://github.com/sidooms/MovieTweetings"


def read_ratings(path: Path) -> pd.DataFrame:
    """`user::movie::rating::ts` -> frame of strings/ints; ids stay strings (IMDb ids have leading zeros)."""
    raw = pd.read_csv(path, sep="::", engine="python", header=None, names=["user", "item", "rating", "timestamp"],
                      dtype={"user": str, "item": str, "rating": np.float32, "timestamp": np.int64},
                      encoding="utf-8")
    return raw


def read_movies(path: Path) -> pd.DataFrame:
    """`movie_id::Title (Year)::Genre|Genre` -> item_id, title, year (nullable), genres ('|'-joined)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        item_id, rest = line.split("::", 1)
        full_title, genres = rest.rsplit("::", 1)  # a title could in principle contain '::'
        match = TITLE_YEAR.match(full_title)
        title, year = (match["title"], int(match["year"])) if match else (full_title.strip(), None)
        rows.append((item_id, title, year, genres))
    movies = pd.DataFrame(rows, columns=["item_id", "title", "year", "genres"])
    movies["year"] = movies["year"].astype("Int16")
    return movies


def k_core(ratings: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with < k ratings until none is left (removing one can push another below k)."""
    while True:
        user_n = ratings.groupby("user")["user"].transform("size")
        item_n = ratings.groupby("item")["item"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return ratings
        ratings = ratings[keep]


def renumber_users(ratings: pd.DataFrame) -> pd.DataFrame:
    """Users become '1'..'n' in order of their original numeric id (collection order)."""
    originals = np.sort(ratings["user"].astype(np.int64).unique())
    new_ids = pd.Series(np.arange(1, len(originals) + 1).astype(str), index=originals)
    out = ratings.copy()
    out["user_id"] = new_ids.loc[out["user"].astype(np.int64)].to_numpy()
    out["user_num"] = out["user_id"].astype(np.int64)
    out = out.sort_values(["user_num", "timestamp", "item"], kind="stable")
    return out[["user_id", "item", "rating", "timestamp"]].rename(columns={"item": "item_id"}).reset_index(drop=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source: Path, out: Path, k: int) -> dict:
    ratings_path, movies_path = source / SNAPSHOT / "ratings.dat", source / SNAPSHOT / "movies.dat"
    ratings = read_ratings(ratings_path)
    movies = read_movies(movies_path)
    core = renumber_users(k_core(ratings, k))
    items = movies[movies["item_id"].isin(core["item_id"])].sort_values("item_id").reset_index(drop=True)
    missing = set(core["item_id"]) - set(items["item_id"])
    if missing:
        raise SystemExit(f"{len(missing)} rated items have no row in movies.dat, e.g. {sorted(missing)[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    core.to_parquet(out / "interactions.parquet", index=False, compression="zstd")
    items.to_parquet(out / "items.parquet", index=False, compression="zstd")
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    info = {
        "source": f"{SOURCE_URL} ({SNAPSHOT})",
        "source_sha256": {"ratings.dat": sha256(ratings_path), "movies.dat": sha256(movies_path)},
        "k_core": k,
        "source_counts": {"interactions": len(ratings), "users": int(ratings["user"].nunique()),
                          "items": int(ratings["item"].nunique())},
        "counts": {"interactions": len(core), "users": int(core["user_id"].nunique()),
                   "items": len(items)},
        "time_range": [int(core["timestamp"].min()), int(core["timestamp"].max())],
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(readme(info))
    return info


def readme(info: dict) -> str:
    c, s = info["counts"], info["source_counts"]
    return f"""# Demo dataset: MovieTweetings ({SNAPSHOT}, {info['k_core']}-core)

The dataset RecSys Explorer opens on. Real movie ratings (0-10) that Twitter users posted through
IMDb, from **MovieTweetings** by Simon Dooms, <{SOURCE_URL}>, MIT License (see `LICENSE`, kept
unchanged as its terms require).

## Files
- `interactions.parquet`: `user_id` (str, '1'..'{c['users']}'), `item_id` (str, IMDb number with
  leading zeros), `rating` (float, 0-10), `timestamp` (int64, unix seconds).
- `items.parquet`: `item_id`, `title` (without the year), `year` (int, parsed from the title),
  `genres` ('|'-joined IMDb genres; empty for a few movies).
- `build_info.json`: counts, k and the SHA-256 of the source files.

## How it was derived (`python bench/build_demo.py`)
From the {s['interactions']:,} ratings of {s['users']:,} users on {s['items']:,} movies, keep the
{info['k_core']}-core: repeatedly drop users and movies with fewer than {info['k_core']} ratings until every user
and every movie has at least {info['k_core']}. Result: **{c['interactions']:,} ratings, {c['users']:,} users,
{c['items']:,} movies**. Why {info['k_core']}: it is the usual preprocessing of sequential recommenders (SASRec,
BERT4Rec), it leaves a few thousand users and movies, and with leave-one-out every user keeps at least
{info['k_core'] - 2} training items. Users are renumbered 1..n (no upstream user id, and nothing linking a user
to a Twitter account, is shipped; the upstream `users.dat` was never used).

## Citation
{CITATION}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder holding LICENSE and snapshot-100K/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--k", type=int, default=5, help="minimum ratings per user and per item")
    args = parser.parse_args()
    info = build(args.source, args.out, args.k)
    print(json.dumps(info["counts"]), "k =", info["k_core"])
    for path in sorted(args.out.iterdir()):
        print(f"{path.name:24s} {path.stat().st_size:>10,d} bytes")


if __name__ == "__main__":
    main()
