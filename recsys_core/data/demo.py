"""The built-in demo dataset: a 5-core of MovieTweetings (MIT), shipped in `assets/demo/`.

Read straight from its known Parquet layout (no sniffing, no column mapping) so the app can open
on it instantly. `bench/build_demo.py` rebuilds the files; `assets/demo/README.md` says how.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pandas as pd

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.errors import DataError

DEMO_NAME = "demo-movietweetings"
DEMO_SOURCE = "MovieTweetings snapshot-100K, 5-core (MIT, github.com/sidooms/MovieTweetings)"


def demo_dir() -> Path:
    """Folder holding the demo files: `<repo root>/assets/demo`, found relative to this package."""
    return Path(__file__).resolve().parents[2] / "assets" / "demo"


@functools.lru_cache(maxsize=1)
def demo_version() -> str:
    """A digest of the shipped demo files: a workspace copy saved from other files is stale."""
    digest = hashlib.sha256()
    for name in ("interactions.parquet", "items.parquet"):
        path = demo_dir() / name
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()[:12]


def demo_source() -> str:
    """The source line a workspace records for the demo, including the version of its files."""
    return f"{DEMO_SOURCE} [files {demo_version()}]"


def load_demo() -> Dataset:
    """The demo as a `Dataset` (about 68k ratings, 4.3k users, 2.4k movies with title, year, genres)."""
    folder = demo_dir()
    try:
        ratings = pd.read_parquet(folder / "interactions.parquet")
        items = pd.read_parquet(folder / "items.parquet")
    except (OSError, ValueError) as err:
        raise DataError(f"the built-in demo dataset is unreadable ({err})", file=str(folder),
                        hint="rebuild it with `python bench/build_demo.py` or reinstall the app") from err
    frame = pd.DataFrame({
        "user": ratings["user_id"],
        "item": ratings["item_id"],
        "rating": ratings["rating"],
        "timestamp": ratings["timestamp"],
    })
    return build_dataset(frame, name=DEMO_NAME, items=items, source=DEMO_SOURCE,
                         options={"demo": True, "k_core": 5, "rating_scale": [0, 10]})
