"""Segment breakdowns: every user lands in exactly one segment per axis, and the segment means
reproduce the overall mean when weighted by users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_a_recorded_run_stores_its_per_user_metrics_equal_to_re_scoring(tmp_path) -> None:
    from recsys_core.evaluation.compare import PER_USER_FILE, load_per_user
    from recsys_core.models.base import load_model
    from recsys_core.training.experiment import run_experiment
    from recsys_core.workspace.registry import Workspace

    ds = _dataset()
    ws = Workspace(tmp_path / "ws")
    result = run_experiment(ds, "ease", {"l2": 5.0}, workspace=ws, dataset_name="synthetic")
    run = ws.get_run(result.run_id)
    assert (run.artifact_dir / PER_USER_FILE).is_file()  # in the run's folder, written before it became visible
    stored = load_per_user(run.artifact_dir)
    fresh = per_user_metrics(load_model(run.artifact_dir), leave_one_out(ds))
    assert len(stored) == len(fresh) == ds.n_users
    for column in ("user", "history_len", "rank", "ndcg@10", "hr@10", "target_pct"):
        np.testing.assert_allclose(stored[column].to_numpy(float), fresh[column].to_numpy(float), rtol=1e-6)
    for column in ("history segment", "target popularity"):
        assert stored[column].astype(str).tolist() == fresh[column].astype(str).tolist()
    assert stored["ndcg@10"].mean() == pytest.approx(result.metrics["ndcg@10"])
    assert "per_user" not in result.metrics and "per_user" not in run.metrics


def test_a_damaged_or_missing_per_user_file_reads_as_none(tmp_path) -> None:
    from recsys_core.evaluation.compare import PER_USER_FILE, load_per_user

    assert load_per_user(tmp_path) is None
    (tmp_path / PER_USER_FILE).write_bytes(b"not a numpy file")
    assert load_per_user(tmp_path) is None


def test_per_user_table_of_a_sampled_evaluation_uses_each_users_own_target() -> None:
    from recsys_core.evaluation.compare import per_user_table
    from recsys_core.evaluation.metrics import popularity_percentile, train_popularity

    ds = _dataset()
    split = leave_one_out(ds)
    model = Popularity().fit(ds, split=split)
    popularity = train_popularity(split)
    frame = evaluate(model, split.test, item_popularity=popularity, per_user=True, max_users=15, seed=3)["per_user"]
    table = per_user_table(frame, split.test, popularity)
    pct = popularity_percentile(popularity)
    where = {int(u): i for i, u in enumerate(split.test.users)}
    expected = [pct[int(split.test.targets[where[int(u)]][0])] for u in table["user"]]
    assert len(table) == 15 and np.allclose(table["target_pct"], expected)
