"""Where models differ: per-user metrics broken down by history length and by target-item popularity.

A leaderboard mean hides that sequence models and text towers win on different users; the
segments here are the two axes users ask about (short vs long histories, head vs tail items).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys_core.data.splits import EvalSet, Split
from recsys_core.evaluation.metrics import evaluate, popularity_percentile, train_popularity

if TYPE_CHECKING:  # evaluation ranks any scorer; models import it for validation
    from recsys_core.models.base import Recommender

HISTORY_EDGES = (0, 5, 20, 50, np.inf)  # history-length buckets: 1-5, 6-20, 21-50, 51+
POPULARITY_EDGES = (0.0, 0.5, 0.9, 1.01)  # target popularity percentile: tail, mid, head (top 10%)
POPULARITY_LABELS = ("tail (bottom 50%)", "mid (50-90%)", "head (top 10%)")


def history_segment(lengths: np.ndarray) -> pd.Categorical:
    labels = [f"{int(lo) + 1}-{int(hi)}" if np.isfinite(hi) else f"{int(lo) + 1}+"
              for lo, hi in pairwise(HISTORY_EDGES)]
    return pd.cut(lengths, bins=list(HISTORY_EDGES), labels=labels, right=True)


def popularity_segment(percentiles: np.ndarray) -> pd.Categorical:
    return pd.cut(percentiles, bins=list(POPULARITY_EDGES), labels=list(POPULARITY_LABELS), right=False)


def per_user_metrics(model: Recommender, split: Split, evalset: EvalSet | None = None) -> pd.DataFrame:
    """One row per evaluated user with its metrics and both segment labels."""
    evalset = evalset or split.test
    popularity = train_popularity(split)
    frame = evaluate(model, evalset, item_popularity=popularity, per_user=True)["per_user"]
    pct = popularity_percentile(popularity)
    first_target = np.fromiter((int(np.asarray(t).reshape(-1)[0]) for t in evalset.targets), np.int64, len(evalset))
    frame["history segment"] = history_segment(frame["history_len"].to_numpy())
    frame["target popularity"] = popularity_segment(pct[first_target[: len(frame)]])
    return frame


def segment_breakdown(frames: Mapping[str, pd.DataFrame], metric: str = "ndcg@10") -> pd.DataFrame:
    """Long table: model, segment kind, segment, users, mean metric — ready for a grouped bar chart."""
    rows = []
    for name, frame in frames.items():
        for kind in ("history segment", "target popularity"):
            grouped = frame.groupby(kind, observed=False)[metric]
            for segment, values in grouped:
                rows.append({"model": name, "kind": kind, "segment": str(segment),
                             "users": int(values.size), metric: float(values.mean()) if values.size else np.nan})
    return pd.DataFrame(rows)
