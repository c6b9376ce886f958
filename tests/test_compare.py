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


def _rows(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        n = int(rng.integers(3, 70))
        items = rng.zipf(1.6, size=n) % 40
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def _dataset(seed: int = 0):
    return build_dataset(_rows(seed), name="synthetic")


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



# ---- the use case: per-user results of a saved run (training/per_user.py) ------------------------------------


@pytest.fixture
def saved_run(tmp_path, monkeypatch):
    """(dataset, run folder, loads): an item-kNN run saved in a workspace, and a list that grows by one each
    time the use case loads the run's (real) model to score it."""
    from recsys_core.models.base import load_model
    from recsys_core.training import per_user
    from recsys_core.training.experiment import run_experiment
    from recsys_core.workspace.registry import Workspace

    ds = _dataset()
    ws = Workspace(tmp_path / "ws")
    result = run_experiment(ds, "itemknn", workspace=ws, dataset_name="synthetic")
    loads: list[str] = []

    def counted(folder):
        loads.append(str(folder))
        return load_model(folder)

    monkeypatch.setattr(per_user, "load_model", counted)
    return ds, ws.get_run(result.run_id).artifact_dir, loads


def _resaved():
    """The dataset saved again with the same catalogue and other interactions: the 20 longest histories
    lose their last item."""
    rows = _rows()
    longest = rows.groupby("user").size().nlargest(20).index
    last = rows[rows["user"].isin(longest)].groupby("user").tail(1).index
    return build_dataset(rows.drop(index=last), name="synthetic")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    columns = ["user", "history_len", "rank", "ndcg@10", "target_pct"]
    return a[columns].shape == b[columns].shape and np.allclose(a[columns].to_numpy(float), b[columns].to_numpy(float))


def test_a_fresh_run_is_read_from_its_folder_without_loading_the_model(saved_run) -> None:
    from recsys_core.evaluation.compare import PER_USER_FILE, per_user_metrics
    from recsys_core.models.base import load_model
    from recsys_core.training.per_user import per_user_results

    ds, folder, loads = saved_run
    written = (folder / PER_USER_FILE).stat().st_mtime_ns
    table = per_user_results(folder, ds)
    assert loads == [] and (folder / PER_USER_FILE).stat().st_mtime_ns == written  # read, not re-scored
    assert _same(table, per_user_metrics(load_model(folder), leave_one_out(ds)))
    assert {"history segment", "target popularity"} <= set(table.columns)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "without the data's key"])
def test_a_run_without_a_usable_table_is_scored_once_then_read(saved_run, damage) -> None:
    from recsys_core.evaluation.compare import EVALUATED_ON, PER_USER_FILE
    from recsys_core.progress import Progress
    from recsys_core.training.per_user import per_user_results

    ds, folder, loads = saved_run
    path = folder / PER_USER_FILE
    expected = per_user_results(folder, ds)
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:  # a file stored before tables carried the key of the data they were scored on
        records = np.load(path, allow_pickle=False)
        np.save(path, pd.DataFrame.from_records(records).drop(columns=EVALUATED_ON).to_records(index=False))
    progress = Progress()
    first = per_user_results(folder, ds, progress=progress)
    written = path.stat().st_mtime_ns
    second = per_user_results(folder, ds)
    assert len(loads) == 1 and path.stat().st_mtime_ns == written  # scored once, stored, then read
    assert _same(first, expected) and _same(second, expected)
    users = len(leave_one_out(ds).test)
    assert progress.events[-1].step == progress.events[-1].total == users  # progress counts users
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_a_dataset_saved_again_with_other_interactions_is_re_scored(saved_run) -> None:
    from recsys_core.training.per_user import per_user_results

    ds, folder, loads = saved_run
    other = _resaved()
    assert other.catalogue_digest == ds.catalogue_digest  # the model still fits: only the interactions differ
    table = per_user_results(folder, other)
    assert len(loads) == 1
    lengths = dict(zip(table["user"], table["history_len"], strict=True))
    before = per_user_results(folder, ds)  # the stored table is now the other version's: scored again
    assert len(loads) == 2
    assert sum(lengths[u] != n for u, n in zip(before["user"], before["history_len"], strict=True)) == 20
    assert _same(per_user_results(folder, ds), before) and len(loads) == 2


def test_a_folder_that_cannot_be_written_still_gets_the_table_scored_once(saved_run) -> None:
    from recsys_core.evaluation.compare import PER_USER_FILE
    from recsys_core.training.per_user import per_user_results

    ds, folder, loads = saved_run
    expected = per_user_results(folder, ds)
    (folder / PER_USER_FILE).unlink()
    (folder / PER_USER_FILE).mkdir()  # the rename onto it fails, even for root, whom chmod does not stop
    (folder / PER_USER_FILE / "x").write_text("")
    folder.chmod(0o555)
    try:
        first, second = per_user_results(folder, ds), per_user_results(folder, ds)
    finally:
        folder.chmod(0o755)
    assert _same(first, expected) and _same(second, expected)
    assert len(loads) == 1  # kept in memory: not re-scored on every call
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_cancel_returns_none_stores_nothing_and_a_later_call_scores(saved_run) -> None:
    from recsys_core.evaluation.compare import PER_USER_FILE
    from recsys_core.progress import Progress
    from recsys_core.training.per_user import per_user_results

    ds, folder, loads = saved_run
    (folder / PER_USER_FILE).unlink()
    progress = Progress()
    progress.cancel()
    assert per_user_results(folder, ds, progress=progress) is None
    assert not (folder / PER_USER_FILE).exists()
    assert loads == []  # cancelled before the model was even loaded
    assert per_user_results(folder, ds) is not None and (folder / PER_USER_FILE).is_file() and len(loads) == 1


def test_a_model_of_another_catalogue_is_refused_with_a_model_error(saved_run) -> None:
    from recsys_core.errors import ModelError
    from recsys_core.evaluation.compare import PER_USER_FILE
    from recsys_core.training.per_user import per_user_results

    _, folder, _ = saved_run
    (folder / PER_USER_FILE).unlink()
    with pytest.raises(ModelError, match="another catalogue"):
        per_user_results(folder, build_dataset(_rows(seed=1).assign(item=lambda f: f["item"] + 100), name="other"))


def test_recsys_evaluate_per_user_gives_the_breakdown_of_the_stored_table(saved_run, capsys, tmp_path) -> None:
    import json

    from recsys_core.cli import main
    from recsys_core.evaluation.compare import load_per_user
    from recsys_core.workspace.registry import Workspace

    ds, folder, loads = saved_run
    Workspace(tmp_path / "ws").save_dataset(ds, "synthetic")
    argv = ["--workspace", str(tmp_path / "ws"), "evaluate", "--model-dir", str(folder), "--dataset", "synthetic"]
    assert main([*argv, "--per-user"]) == 0
    out = json.loads(capsys.readouterr().out)  # strict JSON: an empty segment's mean is null, not NaN
    expected = segment_breakdown({"m": load_per_user(folder)})
    assert loads == [] and len(out["segments"]) == len(expected)
    for row, (_, want) in zip(out["segments"], expected.iterrows(), strict=True):
        assert (row["kind"], row["segment"], row["users"]) == (want["kind"], want["segment"], want["users"])
        assert row["ndcg@10"] is None if want["users"] == 0 else row["ndcg@10"] == pytest.approx(want["ndcg@10"])
