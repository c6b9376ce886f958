"""Paths that keep cost bounded at scale: item-kNN fitted block by block under a memory budget, and
`score_items` scoring a few items without the full catalogue. Each is checked against a plain reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.errors import ConfigError, DataError
from recsys_core.models import itemknn
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig, block_rows
from recsys_core.progress import Progress

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k" / "u.data"


def _zipf_dataset(n_users: int = 2000, n_items: int = 1000, rows: int = 20_000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    frame = pd.DataFrame({"user": rng.integers(0, n_users, rows),
                          "item": rng.choice(n_items, rows, p=popularity / popularity.sum()),
                          "timestamp": rng.integers(0, 10**6, rows)})
    return build_dataset(frame, name="zipf")


@pytest.fixture(scope="module")
def zipf() -> Dataset:
    return _zipf_dataset()


def _binary(ds: Dataset) -> np.ndarray:
    x = np.zeros((ds.n_users, ds.n_items), dtype=np.float32)
    x[ds.interactions["user"], ds.interactions["item"]] = 1.0
    return x


def _reference_similarity(x: np.ndarray, shrink: float) -> np.ndarray:
    """sim[j, i] for target j, straight from the definition on the dense co-occurrence, in float32."""
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    denom = np.outer(norms, norms) + np.float32(shrink)
    sim = np.where(denom > 0, co / np.maximum(denom, np.float32(1e-12)), np.float32(0))
    np.fill_diagonal(sim, 0.0)
    return sim


def _assert_neighbours_match(model: ItemKNN, sim: np.ndarray, items: np.ndarray | None = None) -> None:
    neighbours, sims = model.neighbors_.numpy(), model.similarities_.numpy()
    k = neighbours.shape[1]
    items = np.arange(len(sim)) if items is None else items
    expected = -np.sort(-sim[items], axis=1)[:, :k]
    np.testing.assert_array_equal(sims[items], expected)  # the k best values, exactly
    # ... held by the right items (any order among equal similarities)
    np.testing.assert_array_equal(np.take_along_axis(sim[items], neighbours[items].astype(np.int64), axis=1),
                                  sims[items])
    assert all(len(set(row)) == k for row in neighbours[items])


def _many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # One row per dense step and a 1 MB budget: dozens of blocks even on a small catalogue.
    monkeypatch.setattr(itemknn, "_CHUNK_CELLS", 2**8)


# Neighbours picked from every cell of a row chunk (dense) or from the nonzero co-occurrences only (sparse,
# large sparse catalogues): the same neighbours, whatever the blocks.
PATHS = {"dense": 0.0, "sparse": float("inf")}


@pytest.mark.parametrize("path", PATHS)
def test_blocked_itemknn_matches_the_dense_reference(zipf: Dataset, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setattr(itemknn, "_SPARSE_TOPK_DENSITY", PATHS[path])
    sim = _reference_similarity(_binary(zipf), 10.0)
    whole = ItemKNN(ItemKNNConfig(k=20, shrink=10.0)).fit(zipf)
    _assert_neighbours_match(whole, sim)
    _many_blocks(monkeypatch)
    assert block_rows(zipf.n_items, 1) < zipf.n_items // 10
    blocked = ItemKNN(ItemKNNConfig(k=20, shrink=10.0, memory_budget_mb=1)).fit(zipf)
    _assert_neighbours_match(blocked, sim)
    assert (blocked.similarity() != whole.similarity()).nnz == 0


@pytest.mark.parametrize("path", PATHS)
def test_blocked_itemknn_matches_the_dense_reference_on_ml100k(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    if not ML100K.is_file():
        pytest.skip("ML-100k not found under ../shared/data")
    monkeypatch.setattr(itemknn, "_SPARSE_TOPK_DENSITY", PATHS[path])
    frame = pd.read_csv(ML100K, sep="\t", names=["user", "item", "rating", "timestamp"])
    ds = build_dataset(frame, name="ml-100k")
    sim = _reference_similarity(_binary(ds), 10.0)
    _assert_neighbours_match(ItemKNN().fit(ds), sim)  # default config, one block
    _many_blocks(monkeypatch)
    _assert_neighbours_match(ItemKNN(ItemKNNConfig(memory_budget_mb=1)).fit(ds), sim)


def test_block_size_follows_the_budget() -> None:
    for n_items in (1_000, 100_000, 500_000):
        for budget in (512, 2048):
            rows = block_rows(n_items, budget)
            step = max(1, itemknn._CHUNK_CELLS // n_items)
            assert rows % step == 0 and rows >= step
            if rows > step:  # above the one-step floor, a block's sparse rows fit what the budget leaves
                assert rows * n_items * itemknn._SPARSE_CELL_BYTES + itemknn._DENSE_STEP_BYTES <= budget * 2**20
    assert block_rows(100_000, 4096) > 2 * block_rows(100_000, 2048) - 2 * (2**24 // 100_000)


def test_itemknn_reports_each_block_and_stops_when_cancelled(zipf: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    _many_blocks(monkeypatch)
    config = ItemKNNConfig(k=5, memory_budget_mb=1)
    rows = block_rows(zipf.n_items, 1)
    progress = Progress()
    ItemKNN(config).fit(zipf, progress=progress)
    assert [e.step for e in progress.events] == [*range(rows, zipf.n_items, rows), zipf.n_items]

    cancelling = Progress(callback=lambda event: cancelling.cancel())
    model = ItemKNN(config).fit(zipf, progress=cancelling)
    assert len(cancelling.events) == 1
    _assert_neighbours_match(model, _reference_similarity(_binary(zipf), 10.0), np.arange(rows))
    assert not model.similarities_[rows:].any()  # items not reached keep no neighbours: they score 0
    assert model.score([np.arange(rows, rows + 5)]).shape == (1, zipf.n_items)


def test_itemknn_rejects_a_non_positive_budget(zipf: Dataset) -> None:
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        ItemKNN(ItemKNNConfig(memory_budget_mb=0)).fit(zipf)


# ---- score_items: the scores of a few items, equal to the full scores' columns -------------------

SMALL_SEQ = {"max_len": 12, "hidden": 32, "layers": 1, "heads": 2, "batch_size": 32, "device": "cpu", "epochs": 2,
             "eval_every": 5}


def _family_model(name: str, ds: Dataset):
    from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
    from recsys_core.models.ease import EASE
    from recsys_core.models.hybrid import Hybrid, HybridConfig
    from recsys_core.models.popularity import Popularity
    from recsys_core.models.sasrec import SASRec, SASRecConfig
    from recsys_core.models.settings import build_config
    from recsys_core.models.text_tower import TextTower

    makers = {
        "popularity": lambda: Popularity(), "ease": lambda: EASE(), "itemknn": lambda: ItemKNN(),
        "itemknn-recency": lambda: ItemKNN(ItemKNNConfig(k=5, recency_half_life=2.0)),
        "sasrec-bias": lambda: SASRec(build_config(SASRecConfig, {**SMALL_SEQ, "output_bias": True})),
        "bert4rec": lambda: BERT4Rec(build_config(BERT4RecConfig, SMALL_SEQ)),
        "hybrid": lambda: Hybrid(build_config(HybridConfig, SMALL_SEQ)),
        "text_tower": lambda: TextTower(),
    }
    return makers[name]().fit(ds)


def _histories(n_items: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.array([], dtype=np.int64), np.array([3]), rng.integers(0, n_items, 30), *[
        rng.choice(n_items, int(rng.integers(1, 10)), replace=False) for _ in range(20)]]


EXACT = {"popularity", "ease", "itemknn", "itemknn-recency"}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("family", ["popularity", "ease", "itemknn", "itemknn-recency", "sasrec-bias", "bert4rec",
                                    "hybrid", "text_tower"])
def test_score_items_equals_the_full_scores_columns(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from movie_fixtures import movie_dataset

    ds = movie_dataset()
    model = _family_model(family, ds)
    histories = _histories(ds.n_items)
    for items in (np.array([7]), np.array([0, ds.n_items - 1, 5, 5, 2]), np.arange(ds.n_items)):
        full = model.score(histories)[:, torch.from_numpy(items)]
        part = model.score_items(histories, items)
        assert part.shape == (len(histories), len(items)) and part.dtype == torch.float32
        if family in EXACT:
            assert torch.equal(part, full)
        else:  # another matrix shape may take another BLAS kernel: equal up to float32 rounding
            torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="outside the catalogue"):
        model.score_items(histories, [ds.n_items])


def test_itemknn_score_items_on_the_sparse_path(zipf: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(itemknn, "_DENSE_ITEMS", 0)  # what a catalogue too big for a dense W takes
    model = ItemKNN(ItemKNNConfig(k=10)).fit(zipf)
    histories = _histories(zipf.n_items)
    items = np.array([0, 1, 500, zipf.n_items - 1, 1])
    assert torch.equal(model.score_items(histories, items), model.score(histories)[:, torch.from_numpy(items)])
