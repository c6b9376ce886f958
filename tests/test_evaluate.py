"""Full-ranking metrics: against ranx, against hand-computed cases (ties, exclusions, multi-target), and NaN guards."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import EvalSet
from recsys_core.errors import ModelError
from recsys_core.evaluation.metrics import evaluate, popularity_percentile, rank_metrics, top_k
from recsys_core.models.popularity import Popularity
from recsys_core.progress import Progress


def _one(metrics: dict[str, torch.Tensor], key: str) -> float:
    return float(metrics[key][0])


# ---- independent reference: ranx -----------------------------------------------------------------

def test_metrics_match_ranx_on_random_distinct_scores() -> None:
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    n_users, n_items = 60, 50
    # A permutation per row gives distinct scores, so both libraries rank identically.
    scores = torch.from_numpy(np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32))
    targets, exclude = [], []
    for _ in range(n_users):
        items = rng.permutation(n_items)
        n_t = int(rng.integers(1, 4))  # <= 3 targets, below every K, so ranx's recall (hits/|rel|) agrees
        targets.append(items[:n_t])
        exclude.append(items[n_t:n_t + int(rng.integers(0, 8))])
    qrels = {f"u{u}": {f"i{i}": 1 for i in targets[u]} for u in range(n_users)}
    run = {f"u{u}": {f"i{i}": float(scores[u, i]) + 1.0 for i in range(n_items) if i not in set(exclude[u])}
           for u in range(n_users)}
    ours = rank_metrics(scores, targets, exclude, ks=(5, 10, 20))
    for k in (5, 10, 20):
        for mine, theirs in (("ndcg", "ndcg"), ("hr", "hit_rate"), ("recall", "recall"), ("mrr", "mrr")):
            ref_run = ranx.Run(run)
            ranx.evaluate(ranx.Qrels(qrels), ref_run, f"{theirs}@{k}")
            expected = np.array([ref_run.scores[f"{theirs}@{k}"][f"u{u}"] for u in range(n_users)])
            np.testing.assert_allclose(ours[f"{mine}@{k}"].numpy(), expected, atol=1e-9, err_msg=f"{mine}@{k}")


# ---- hand-computed cases --------------------------------------------------------------------------

def test_ties_rank_pessimistically() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    m = rank_metrics(scores, [np.array([2])], ks=(1, 2, 3))
    assert _one(m, "rank") == 3  # item 1 ties with the target, so the target sits below it
    assert _one(m, "hr@2") == 0.0
    assert _one(m, "hr@3") == 1.0
    assert _one(m, "ndcg@3") == pytest.approx(1 / math.log2(4))
    assert _one(m, "mrr@3") == pytest.approx(1 / 3)


def test_constant_scores_earn_nothing() -> None:
    m = rank_metrics(torch.zeros((1, 100)), [np.array([0])], ks=(10,))
    assert _one(m, "rank") == 100
    assert _one(m, "ndcg@10") == 0.0


def test_excluded_items_leave_the_ranking_but_targets_never_do() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    target = [np.array([2])]
    assert _one(rank_metrics(scores, target, [np.array([0])]), "rank") == 2
    # Excluding the target itself (it was in the history) must not drop it from the ranking.
    assert _one(rank_metrics(scores, target, [np.array([0, 2])]), "rank") == 2
    mask = torch.tensor([[True, True, False, False]])
    assert _one(rank_metrics(scores, target, mask), "rank") == 1


def test_multiple_targets() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    m = rank_metrics(scores, [np.array([4, 1])], ks=(2, 5))  # ranks 2 and 5
    assert _one(m, "hr@2") == 1.0
    assert _one(m, "recall@2") == pytest.approx(0.5)
    assert _one(m, "ndcg@2") == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert _one(m, "mrr@2") == pytest.approx(0.5)
    assert _one(m, "recall@5") == 1.0
    assert _one(m, "ndcg@5") == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))


def _brute_force(scores: np.ndarray, targets: list[np.ndarray], exclude: list[np.ndarray], k: int) -> dict:
    """Metrics straight from the definitions, one user and one target at a time."""
    out: dict[str, list[float]] = {"hr": [], "recall": [], "ndcg": [], "mrr": []}
    for row, tgt, exc in zip(scores, targets, exclude):
        candidates = [j for j in range(len(row)) if j in set(tgt) or j not in set(exc)]
        ranks = [sum(1 for j in candidates if j != t and row[j] >= row[t]) + 1 for t in tgt]
        hits = [r for r in ranks if r <= k]
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(tgt))))
        out["hr"].append(float(bool(hits)))
        out["recall"].append(len(hits) / min(k, len(tgt)))
        out["ndcg"].append(sum(1 / math.log2(r + 1) for r in hits) / ideal)
        out["mrr"].append(1 / min(ranks) if min(ranks) <= k else 0.0)
    return out


@pytest.mark.parametrize("max_targets", [3, 40])  # few targets take the comparison path, many the sort path
def test_multi_target_metrics_match_brute_force_with_ties(max_targets: int) -> None:
    rng = np.random.default_rng(max_targets)
    n_users, n_items = 25, 60
    scores = rng.integers(0, 8, (n_users, n_items)).astype(np.float32)  # many ties
    targets = [rng.choice(n_items, rng.integers(1, max_targets + 1), replace=False) for _ in range(n_users)]
    exclude = [rng.choice(n_items, 10, replace=False) for _ in range(n_users)]  # may overlap targets
    ours = rank_metrics(torch.from_numpy(scores), targets, exclude, ks=(5, 20))
    for k in (5, 20):
        expected = _brute_force(scores, targets, exclude, k)
        for name, values in expected.items():
            np.testing.assert_allclose(ours[f"{name}@{k}"].numpy(), values, atol=1e-9, err_msg=f"{name}@{k}")


def test_recall_divides_by_min_of_k_and_targets() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    m = rank_metrics(scores, [np.array([0, 1, 2])], ks=(2,))
    assert _one(m, "recall@2") == 1.0
    assert _one(m, "ndcg@2") == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad: float) -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.2, 0.1]])
    scores[1, 0] = bad
    with pytest.raises(ModelError, match="NaN or infinite"):
        rank_metrics(scores, [np.array([1]), np.array([1])])


def test_non_finite_score_on_an_excluded_item_is_ignored() -> None:
    # A model may mask seen items itself with -inf; they are not ranked, so they cannot hit.
    scores = torch.tensor([[float("-inf"), 0.5, 0.1]])
    assert _one(rank_metrics(scores, [np.array([1])], [np.array([0])]), "rank") == 1


def test_popularity_percentile_midranks() -> None:
    np.testing.assert_allclose(popularity_percentile(np.array([0, 0, 5, 10])), [0.25, 0.25, 0.625, 0.875])


def test_top_k_skips_excluded_and_pads() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [1.0, 2.0, 3.0, 4.0]])
    idx, val = top_k(scores, 3, [np.array([1]), np.array([0, 1, 2])])
    assert idx[0].tolist() == [3, 2, 0]
    assert idx[1].tolist() == [3, -1, -1]
    assert val[1, 0] == 4.0
    with pytest.raises(ModelError):
        top_k(torch.tensor([[float("nan"), 1.0]]), 1)


# ---- evaluate() end to end on a tiny dataset ----------------------------------------------------

@pytest.fixture
def tiny() -> tuple[Popularity, EvalSet, np.ndarray]:
    # Items a..e with training counts a=4, b=3, c=2, d=1, e=1 (d and e tie).
    rows = [(u, i) for u, items in {"u1": "abcd", "u2": "abc", "u3": "ab", "u4": "a"}.items() for i in items]
    rows.append(("u5", "e"))
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item"]), name="tiny")
    counts = np.array([4, 3, 2, 1, 1])
    model = Popularity().fit(ds)
    evalset = EvalSet(np.array([0, 1, 2], dtype=np.int32),
                      [np.array([0]), np.array([0, 1]), np.array([], dtype=np.int64)],
                      [np.array([1]), np.array([4]), np.array([0])])
    return model, evalset, counts


def test_evaluate_popularity_by_hand(tiny) -> None:
    model, evalset, counts = tiny
    res = evaluate(model, evalset, ks=(1, 2), item_popularity=counts)
    # user 0: a seen -> b ranks 1; user 1: a,b seen -> c, then d ties e -> rank 3 (pessimistic); user 2: a ranks 1.
    assert res["users"] == 3
    assert res["hr@1"] == pytest.approx(2 / 3)
    assert res["mrr@2"] == pytest.approx(2 / 3)
    # top-1 lists: b, c, a -> 3 of 5 items; top-2 adds c, d -> 4 of 5.
    assert res["coverage@1"] == pytest.approx(3 / 5)
    assert res["coverage@2"] == pytest.approx(4 / 5)
    pct = popularity_percentile(counts)
    assert res["pop_bias@1"] == pytest.approx(float(np.mean([pct[1], pct[2], pct[0]])))


def test_evaluate_is_batch_size_invariant_and_reports_per_user(tiny) -> None:
    model, evalset, counts = tiny
    whole = evaluate(model, evalset, ks=(1, 2), item_popularity=counts, per_user=True)
    chunked = evaluate(model, evalset, ks=(1, 2), item_popularity=counts, batch_size=1, per_user=True)
    frame = chunked.pop("per_user")
    whole.pop("per_user")
    assert chunked == pytest.approx(whole)
    assert frame["user"].tolist() == [0, 1, 2]
    assert frame["rank"].tolist() == [1, 3, 1]
    assert frame["history_len"].tolist() == [1, 2, 0]
    assert frame["target_popularity"].tolist() == [3, 1, 4]


def test_evaluate_names_model_and_users_on_nan(tiny) -> None:
    model, evalset, _ = tiny
    model.counts_[2] = float("nan")
    evalset.users[:] = [10, 11, 12]
    with pytest.raises(ModelError, match=r"popularity.*10, 11, 12"):
        evaluate(model, evalset)


def test_evaluate_stops_when_cancelled(tiny) -> None:
    model, evalset, _ = tiny
    progress = Progress()
    progress.cancel()
    res = evaluate(model, evalset, ks=(1,), batch_size=1, progress=progress)
    assert res["users"] == 1 and res["cancelled"] is True


# ---- the sparse-exclusion path: chunking, sampling ------------------------------------------------

@pytest.fixture
def random_split():
    from recsys_core.data.splits import temporal_split

    rng = np.random.default_rng(3)
    rows = 3000
    frame = pd.DataFrame({"user": rng.integers(0, 150, rows), "item": rng.zipf(1.3, rows) % 90,
                          "timestamp": rng.integers(0, 10_000, rows)})
    ds = build_dataset(frame, name="random")
    return ds, temporal_split(ds, test_fraction=0.3)  # several targets per user, some also in the history


def test_evaluate_ranks_match_brute_force_in_any_chunking(random_split, monkeypatch) -> None:
    from recsys_core.evaluation import metrics
    from recsys_core.models.itemknn import ItemKNN

    ds, split = random_split
    model = ItemKNN().fit(ds, split=split)
    whole = evaluate(model, split.test, ks=(1, 5, 10), per_user=True)
    scores = model.score(split.test.histories).numpy()
    expected = [min(sum(1 for j in range(ds.n_items) if (j in set(t) or j not in set(h)) and j != x
                        and row[j] >= row[x]) + 1 for x in t)
                for row, h, t in zip(scores, split.test.histories, split.test.targets)]
    assert whole["per_user"]["rank"].tolist() == expected
    monkeypatch.setattr(metrics, "_CHUNK_CELLS", 7)  # a row per chunk, and a few excluded cells per pass
    monkeypatch.setattr(metrics, "_BATCH_BYTES", 4 * 13 * ds.n_items)
    chunked = evaluate(model, split.test, ks=(1, 5, 10), per_user=True)
    frame, reference = chunked.pop("per_user"), whole.pop("per_user")
    assert frame["rank"].tolist() == expected
    # Exact ranks; NDCG sums over a batch's target slots, whose count moves the last bit (as it always did).
    pd.testing.assert_frame_equal(frame, reference, rtol=1e-12)
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_evaluate_samples_users_reproducibly(random_split) -> None:
    from recsys_core.evaluation.metrics import sample_users

    ds, split = random_split
    model = Popularity().fit(ds, split=split)
    full = evaluate(model, split.test, ks=(10,))
    assert "sampled_from" not in full
    sampled = evaluate(model, split.test, ks=(10,), max_users=40, seed=5, per_user=True)
    assert sampled["users"] == 40 and sampled["sampled_from"] == len(split.test)
    subset = sample_users(split.test, 40, seed=5)
    assert sampled["per_user"]["user"].tolist() == list(subset.users)
    assert list(subset.users) == sorted(subset.users)  # kept in evaluation order
    again = evaluate(model, subset, ks=(10,))
    assert {k: v for k, v in sampled.items() if k not in ("per_user", "sampled_from")} == again
    assert evaluate(model, split.test, ks=(10,), max_users=10**6) == full  # a cap above the count changes nothing


def test_evaluate_hands_the_model_users_of_similar_history_length(random_split) -> None:
    """A sequential model pads a batch to its longest history: batches are cut from users sorted by history
    length (the demo's validation went from 5.3 to 0.9 CPU s), longest first, and the per-user rows keep the caller's order."""
    ds, split = random_split
    model = Popularity().fit(ds, split=split)
    calls: list[list[int]] = []
    score = model.score
    model.score = lambda histories: calls.append([len(h) for h in histories]) or score(histories)
    result = evaluate(model, split.test, ks=(10,), batch_size=16, per_user=True)
    flat = [n for call in calls for n in call]
    assert flat == sorted((len(h) for h in split.test.histories), reverse=True) and len(calls) > 3
    assert result["per_user"]["user"].tolist() == list(split.test.users)
    assert result["per_user"]["history_len"].tolist() == [len(h) for h in split.test.histories]
