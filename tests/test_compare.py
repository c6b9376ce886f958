"""Segment breakdowns: every user lands in exactly one segment per axis, and the segment means
reproduce the overall mean when weighted by users."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.evaluation.compare import history_segment, per_user_metrics, popularity_segment, segment_breakdown
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models.popularity import Popularity


def _dataset(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        n = int(rng.integers(3, 70))
        items = rng.zipf(1.6, size=n) % 40
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="synthetic")


def test_history_buckets_edges():
    labels = history_segment(np.array([1, 5, 6, 20, 21, 50, 51, 500]))
    assert list(labels) == ["1-5", "1-5", "6-20", "6-20", "21-50", "21-50", "51+", "51+"]


def test_popularity_buckets_edges():
    labels = popularity_segment(np.array([0.0, 0.49, 0.5, 0.89, 0.9, 1.0]))
    assert list(labels) == ["tail (bottom 50%)"] * 2 + ["mid (50-90%)"] * 2 + ["head (top 10%)"] * 2


def test_breakdown_partitions_users_and_weighted_means_match_overall():
    ds = _dataset()
    split = leave_one_out(ds)
    model = Popularity().fit(ds, split=split)
    frame = per_user_metrics(model, split)
    overall = evaluate(model, split.test)["ndcg@10"]
    table = segment_breakdown({"pop": frame})
    for kind, part in table.groupby("kind"):
        assert part["users"].sum() == len(split.test)
        filled = part[part["users"] > 0]
        weighted = (filled["ndcg@10"] * filled["users"]).sum() / filled["users"].sum()
        assert np.isclose(weighted, overall, atol=1e-6), kind
