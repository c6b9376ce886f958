"""Popularity, item-kNN and EASE: closed-form correctness against NumPy, free-form histories, ML-100k quality."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.errors import ConfigError, DataError, ResourceError
from recsys_core.evaluation.metrics import evaluate, top_k, train_popularity
from recsys_core.models import itemknn
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig
from recsys_core.models.popularity import Popularity

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k" / "u.data"
FAMILIES = [Popularity, ItemKNN, EASE]


@pytest.fixture(scope="module")
def random_data() -> tuple[Dataset, np.ndarray]:
    """30 users x 12 items, each user with 2-8 distinct items; returns the dataset and its dense binary matrix."""
    rng = np.random.default_rng(3)
    rows = [(f"u{u:02d}", f"i{i:02d}") for u in range(30) for i in rng.choice(12, rng.integers(2, 9), replace=False)]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item"]), name="random")
    dense = np.zeros((ds.n_users, ds.n_items))
    dense[ds.interactions["user"], ds.interactions["item"]] = 1.0
    assert ds.n_items == 12
    return ds, dense


def test_ease_matches_numpy_closed_form(random_data) -> None:
    ds, x = random_data
    model = EASE(EASEConfig(l2=5.0)).fit(ds)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(ds.n_items))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights(), b, rtol=1e-5, atol=1e-6)
    hist = [np.array([0, 3, 3]), np.array([5])]  # repeats count once
    expected = np.stack([b[0] + b[3], b[5]])
    np.testing.assert_allclose(model.score(hist).numpy(), expected, rtol=1e-5, atol=1e-6)


def _reference_cosine(x: np.ndarray, shrink: float) -> np.ndarray:
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(sim, 0.0)
    return sim


def test_itemknn_matches_dense_cosine_with_shrink(random_data) -> None:
    ds, x = random_data
    model = ItemKNN(ItemKNNConfig(k=ds.n_items, shrink=3.0)).fit(ds)  # k >= n-1: nothing pruned
    sim = _reference_cosine(x, 3.0)
    np.testing.assert_allclose(model.similarity().toarray(), sim, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.score([np.array([1, 4])]).numpy()[0], sim[1] + sim[4], rtol=1e-5, atol=1e-7)


def test_itemknn_keeps_k_best_neighbours_per_item(random_data) -> None:
    ds, x = random_data
    w = ItemKNN(ItemKNNConfig(k=2, shrink=3.0)).fit(ds).similarity().toarray()
    sim = _reference_cosine(x, 3.0)
    for j in range(ds.n_items):  # column j holds target j's neighbours
        assert np.count_nonzero(w[:, j]) <= 2
        np.testing.assert_allclose(np.sort(w[:, j])[-2:], np.sort(sim[:, j])[-2:], rtol=1e-5)


def test_itemknn_recency_weighting(random_data) -> None:
    ds, x = random_data
    model = ItemKNN(ItemKNNConfig(k=ds.n_items, shrink=3.0, recency_half_life=1.0)).fit(ds)
    sim = _reference_cosine(x, 3.0)
    # History [1, 4, 1]: item 1's latest occurrence is the newest (weight 1), item 4 is one step older (0.5).
    np.testing.assert_allclose(model.score([np.array([1, 4, 1])]).numpy()[0], sim[1] + 0.5 * sim[4], rtol=1e-5)


def test_itemknn_large_catalogue_path_scores_the_same(random_data, monkeypatch) -> None:
    ds, _ = random_data
    config = ItemKNNConfig(k=4, shrink=3.0, recency_half_life=2.0)
    hist = [np.array([1, 4, 1, 7]), np.array([], dtype=np.int64), np.array([11])]
    dense = ItemKNN(config).fit(ds).score(hist)
    monkeypatch.setattr(itemknn, "_DENSE_ITEMS", 0)  # what a catalogue too big for a dense W takes
    sparse = ItemKNN(config).fit(ds).score(hist)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-6, atol=1e-7)


def test_popularity_counts_training_interactions_only() -> None:
    frame = pd.DataFrame({"user": ["a"] * 4 + ["b"] * 4, "item": ["x", "y", "x", "z", "x", "y", "z", "z"],
                          "timestamp": [1, 2, 3, 4, 1, 2, 3, 4]})
    ds = build_dataset(frame, name="pop")
    split = leave_one_out(ds)  # the last two of each user are held out: train is a:[x, y], b:[x, y]
    scores = Popularity().fit(ds, split=split).score([np.array([], dtype=np.int64)])[0]
    assert scores.tolist() == [2.0, 2.0, 0.0]
    full = Popularity().fit(ds).score([np.array([0])])[0]
    assert full.tolist() == [3.0, 2.0, 3.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_free_form_histories_including_empty(family, random_data) -> None:
    ds, _ = random_data
    model = family().fit(ds)
    scores = model.score([np.array([], dtype=np.int64), np.array([2, 7]), [1], []])
    assert scores.dtype == torch.float32 and scores.shape == (4, ds.n_items)
    assert torch.isfinite(scores).all()
    assert model.score([]).shape == (0, ds.n_items)
    with pytest.raises(DataError, match="outside the catalogue"):
        model.score([np.array([ds.n_items])])
    with pytest.raises(DataError, match="integer item indices"):
        model.score([np.array([1.5])])


@pytest.mark.parametrize("family", FAMILIES)
def test_recommendations_never_repeat_the_history(family, random_data) -> None:
    ds, _ = random_data
    model = family().fit(ds)
    hist = [ds.history(u) for u in range(ds.n_users)]
    items, _ = top_k(model.score(hist), 5, hist)
    for h, row in zip(hist, items.numpy()):
        assert not set(row[row >= 0]) & set(h.tolist())


@pytest.mark.parametrize("family", [ItemKNN, EASE])
def test_embeddings_reproduce_scores_at_full_rank(family, random_data) -> None:
    ds, _ = random_data
    model = family(family.config_class(embedding_dim=ds.n_items)).fit(ds)
    hist = [np.array([0, 5]), np.array([3])]
    users, items = model.user_embeddings(hist), model.item_embeddings()
    assert items.shape == (ds.n_items, ds.n_items) and users.shape == (2, ds.n_items)
    np.testing.assert_allclose(users @ items.T, model.score(hist).numpy(), atol=1e-4)
    assert family().fit(ds).item_embeddings().shape == (ds.n_items, min(64, ds.n_items))


def test_popularity_embeddings_reproduce_scores(random_data) -> None:
    ds, _ = random_data
    model = Popularity().fit(ds)
    hist = [np.array([1])]
    np.testing.assert_allclose(model.user_embeddings(hist) @ model.item_embeddings().T, model.score(hist).numpy())


def test_ease_refuses_a_catalogue_above_the_users_own_cap(random_data) -> None:
    ds, _ = random_data
    with pytest.raises(ResourceError, match="your cap max_items=10") as err:
        EASE(EASEConfig(max_items=10)).fit(ds)
    assert "item-kNN" in str(err.value) and "0 = no cap" in str(err.value)
    assert EASE(EASEConfig(max_items=ds.n_items)).refusal(ds) is None  # the memory decides below the cap


def test_ease_rejects_non_positive_l2(random_data) -> None:
    with pytest.raises(ConfigError, match="l2"):
        EASE(EASEConfig(l2=0.0)).fit(random_data[0])


# ---- real data --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    if not ML100K.is_file():
        pytest.skip("ML-100k not found under ../shared/data")
    frame = pd.read_csv(ML100K, sep="\t", names=["user", "item", "rating", "timestamp"])
    return build_dataset(frame, name="ml-100k")


def test_linear_baselines_beat_popularity_on_ml100k(ml100k: Dataset) -> None:
    split = leave_one_out(ml100k)
    pop = train_popularity(split)
    results = {}
    for family in FAMILIES:
        start = time.perf_counter()
        model = family().fit(ml100k, split=split)
        fitted = time.perf_counter()
        results[family.family] = evaluate(model, split.test, ks=(10,), item_popularity=pop)
        scored = time.perf_counter()
        print(f"{family.family}: ndcg@10={results[family.family]['ndcg@10']:.4f} hr@10={results[family.family]['hr@10']:.4f}"
              f" fit={fitted - start:.2f}s evaluate={scored - fitted:.2f}s")
    base = results["popularity"]["ndcg@10"]
    assert results["popularity"]["users"] == 943
    assert results["ease"]["ndcg@10"] > 1.3 * base
    assert results["itemknn"]["ndcg@10"] > 1.2 * base
    # The personalised models spread recommendations over far more of the catalogue.
    assert results["ease"]["coverage@10"] > 3 * results["popularity"]["coverage@10"]


def test_embedding_factors_do_not_depend_on_other_threads_using_torchs_generator(monkeypatch):
    """EASE / item-kNN embeddings come from a randomized SVD: with its random start drawn from torch's
    process-wide generator, another session's thread reseeding it at the wrong moment changed them."""
    import scipy.sparse as sp
    import torch

    from recsys_core.models.histories import low_rank

    matrix = sp.random(600, 400, density=0.05, random_state=1, format="csr")
    alone = low_rank(matrix, 16, seed=3)
    dense = torch.from_numpy(matrix.toarray()).float()
    u, s, v = torch.svd_lowrank(dense, q=26, niter=4)
    reference = float(torch.linalg.norm(dense - (u[:, :16] * s[:16]) @ v[:, :16].T))
    assert float(np.linalg.norm(matrix.toarray() - alone[0] @ alone[1].T)) < 1.01 * reference  # as good as torch's
    randn = torch.randn

    def another_thread_reseeds_first(*args, **kwargs):
        torch.manual_seed(12345)  # what a concurrent session may do just before our draw
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", another_thread_reseeds_first)
    again = low_rank(matrix, 16, seed=3)
    assert np.array_equal(again[0], alone[0]) and np.array_equal(again[1], alone[1])
