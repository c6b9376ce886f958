"""Generated files with the traps of real users' data (not the demo): no timestamps, counts, sorted rows."""

from __future__ import annotations

import numpy as np
import pandas as pd


def listening_log(n_users: int = 500, n_items: int = 400, seed: int = 0) -> pd.DataFrame:
    """user, artist, plays: no timestamps, rows sorted by user then artist id, the way exports often are.

    Users have a latent taste (one of ten clusters of artists) and play counts are heavy-tailed, higher
    for the artists of their taste. Artist
    ids follow popularity (1 = most played), so a user's highest id is their rarest artist: taking file
    order as time would test every model on items it can hardly know.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 10, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.6
    rows = []
    for u in range(n_users):
        taste = cluster == rng.integers(0, 10)
        weights = popularity * np.where(taste, 60.0, 1.0)
        size = int(np.clip(rng.lognormal(2.7, 0.5), 5, 60))
        items = rng.choice(n_items, size=size, replace=False, p=weights / weights.sum())
        # heavy-tailed plays, and favourites get played more: counts carry signal, as in real logs
        plays = np.ceil(rng.pareto(1.2, size) * np.where(taste[items], 20, 2)).astype(int) + 1
        rows += [(f"u{u}", int(i) + 1, int(n)) for i, n in zip(items, plays, strict=True)]
    frame = pd.DataFrame(rows, columns=["user", "artist", "plays"])
    return frame.sort_values(["user", "artist"], kind="stable").reset_index(drop=True)


def as_tsv(frame: pd.DataFrame) -> bytes:
    """No header, tab-separated: the shape of a raw export."""
    return frame.to_csv(sep="\t", header=False, index=False).encode()
