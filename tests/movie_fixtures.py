"""A tiny movie catalogue with real titles and genres, and users with clear tastes, for text-model tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.data.dataset import Dataset, build_dataset

SCI_FI = [
    ("Star Wars", 1977, "Action|Adventure|Sci-Fi"), ("The Empire Strikes Back", 1980, "Action|Adventure|Sci-Fi"),
    ("Return of the Jedi", 1983, "Action|Adventure|Sci-Fi"), ("Alien", 1979, "Horror|Sci-Fi"),
    ("Aliens", 1986, "Action|Sci-Fi|Thriller"), ("Blade Runner", 1982, "Sci-Fi|Thriller"),
    ("The Terminator", 1984, "Action|Sci-Fi"), ("Terminator 2: Judgment Day", 1991, "Action|Sci-Fi"),
    ("The Matrix", 1999, "Action|Sci-Fi"), ("Star Trek: First Contact", 1996, "Action|Adventure|Sci-Fi"),
    ("2001: A Space Odyssey", 1968, "Sci-Fi"), ("Close Encounters of the Third Kind", 1977, "Drama|Sci-Fi"),
    ("Gattaca", 1997, "Drama|Sci-Fi"), ("Total Recall", 1990, "Action|Sci-Fi"),
    ("Independence Day", 1996, "Action|Sci-Fi|War"), ("Contact", 1997, "Drama|Sci-Fi"),
]
ROMANCE = [
    ("Titanic", 1997, "Drama|Romance"), ("Pretty Woman", 1990, "Comedy|Romance"),
    ("Sleepless in Seattle", 1993, "Comedy|Romance"), ("When Harry Met Sally...", 1989, "Comedy|Romance"),
    ("Notting Hill", 1999, "Comedy|Romance"), ("Casablanca", 1942, "Drama|Romance|War"),
    ("Roman Holiday", 1953, "Comedy|Romance"), ("Sense and Sensibility", 1995, "Drama|Romance"),
    ("You've Got Mail", 1998, "Comedy|Romance"), ("Ghost", 1990, "Drama|Romance|Thriller"),
    ("Dirty Dancing", 1987, "Drama|Romance"), ("The English Patient", 1996, "Drama|Romance|War"),
    ("Four Weddings and a Funeral", 1994, "Comedy|Romance"), ("While You Were Sleeping", 1995, "Comedy|Romance"),
    ("Emma", 1996, "Comedy|Drama|Romance"), ("Jerry Maguire", 1996, "Drama|Romance"),
]
OTHER = [
    ("Toy Story", 1995, "Animation|Children's|Comedy"), ("The Lion King", 1994, "Animation|Children's|Musical"),
    ("Aladdin", 1992, "Animation|Children's|Comedy|Musical"), ("Scream", 1996, "Horror|Thriller"),
    ("The Shining", 1980, "Horror"), ("Halloween", 1978, "Horror"), ("Fargo", 1996, "Crime|Drama|Thriller"),
    ("Pulp Fiction", 1994, "Crime|Drama"), ("GoodFellas", 1990, "Crime|Drama"), ("The Godfather", 1972, "Action|Crime|Drama"),
    ("Airplane!", 1980, "Comedy"), ("Groundhog Day", 1993, "Comedy|Romance"), ("Dumb & Dumber", 1994, "Comedy"),
    ("Apollo 13", 1995, "Action|Drama|Thriller"), ("Heat", 1995, "Action|Crime|Thriller"),
    ("Babe", 1995, "Children's|Comedy|Drama"), ("Braveheart", 1995, "Action|Drama|War"),
    ("Schindler's List", 1993, "Drama|War"),
]
MOVIES = SCI_FI + ROMANCE + OTHER


def movie_items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": [f"m{i:02d}" for i in range(len(MOVIES))],
        "title": [t for t, _, _ in MOVIES],
        "year": [y for _, y, _ in MOVIES],
        "genres": [g for _, _, g in MOVIES],
    })


def movie_dataset(n_users: int = 40, per_user: int = 8, seed: int = 0) -> Dataset:
    """Users alternate between sci-fi fans and romance fans; each watches `per_user` movies of their taste
    in a fixed catalogue order (so item k is followed by item k+1), plus one random other movie."""
    rng = np.random.default_rng(seed)
    items = movie_items()
    rows = []
    for u in range(n_users):
        block = range(len(SCI_FI)) if u % 2 == 0 else range(len(SCI_FI), len(SCI_FI) + len(ROMANCE))
        start = int(rng.integers(0, len(block) - per_user + 1))
        seq = list(block)[start : start + per_user]
        seq.insert(int(rng.integers(0, per_user)), len(SCI_FI) + len(ROMANCE) + int(rng.integers(0, len(OTHER))))
        rows += [(f"u{u}", items["item_id"][i], 4.0, 1000 * u + t) for t, i in enumerate(seq)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return build_dataset(frame, name="tiny-movies", items=items)


def index_of(ds: Dataset, title: str) -> int:
    return int(np.flatnonzero(ds.items["title"].to_numpy() == title)[0])
