"""Explanations: Shapley values that add up, match brute force, give ignored items nothing, and pass the
deletion check; attribute reasons appear only when true; long histories, caching, one shared explainer
per model and dataset version, and the global view."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.item_schema import normalise_items
from recsys_core.errors import DataError, ModelError
from recsys_core.insight import explain
from recsys_core.insight.explain import Explainer, explainer_for, summarise_global
from recsys_core.insight.shapley import exact_shapley, shapley
from recsys_core.models.base import Recommender
from recsys_core.models.histories import history_matrix
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class LinearConfig:
    pass


class Linear(Recommender):
    """Test double with known attributions: score = bias + sum of W[h, :] over the distinct history items."""

    config_class = LinearConfig

    def __init__(self, weights: np.ndarray, bias: np.ndarray | None = None) -> None:
        super().__init__()
        self.w = np.asarray(weights, dtype=np.float32)
        self.bias = np.zeros(len(self.w), np.float32) if bias is None else np.asarray(bias, np.float32)
        self.n_items_ = len(self.w)
        self.item_ids_ = [str(i) for i in range(self.n_items_)]
        self.calls = 0

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        self.calls += 1
        x = history_matrix(histories, self.n_items_)
        return torch.from_numpy(np.asarray(x @ self.w, dtype=np.float32) + self.bias)

    def fit(self, dataset, progress=None, split=None):
        return self

    def item_embeddings(self) -> np.ndarray:
        return self.w

    def user_embeddings(self, histories):
        return np.asarray(history_matrix(histories, self.n_items_) @ self.w)

    def state_tensors(self):
        return {"w": torch.from_numpy(self.w)}

    def load_state_tensors(self, tensors) -> None:
        self.w = tensors["w"].numpy()


Linear.family = "test-linear"  # set after class creation, so it never registers as an app model family


def brute_force_shapley(v, n: int) -> np.ndarray:
    """The textbook definition: average marginal contribution over all n! orderings."""
    out = np.zeros(n)
    for order in itertools.permutations(range(n)):
        present = np.zeros(n, dtype=bool)
        before = v(present[None])[0]
        for p in order:
            present[p] = True
            after = v(present[None])[0]
            out[p] += after - before
            before = after
    return out / math.factorial(n)


def pairwise_game(n: int, seed: int):
    """v(S) = sum of w_i + sum over pairs of a_ij, both in S: Shapley value w_i + sum_j a_ij / 2."""
    rng = np.random.default_rng(seed)
    w, a = rng.normal(size=n), np.triu(rng.normal(size=(n, n)), 1)

    def v(masks: np.ndarray) -> np.ndarray:
        x = masks.astype(float)
        return x @ w + np.einsum("mi,ij,mj->m", x, a, x)

    return v, w + (a.sum(axis=0) + a.sum(axis=1)) / 2


def test_exact_shapley_matches_the_textbook_definition_on_a_nonlinear_game() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=2**5)

    def v(masks):  # an arbitrary game: every coalition has its own random value
        return table[(masks.astype(int) << np.arange(5)).sum(axis=1)]

    values, base, full = exact_shapley(v, 5)
    np.testing.assert_allclose(values, brute_force_shapley(v, 5), atol=1e-12)
    assert values.sum() == pytest.approx(full - base)
    assert (base, full) == (table[0], table[-1])


def test_sampled_shapley_adds_up_and_recovers_a_pairwise_game() -> None:
    v, expected = pairwise_game(16, seed=1)
    result = shapley(v, 16, max_exact=10, max_evals=300)
    assert result.method == "permutation" and result.n_evals <= 300 + 1
    assert result.values.sum() == pytest.approx(result.full - result.base, abs=1e-9)  # efficiency
    # Antithetic permutations are exact for games without higher-than-pairwise interactions.
    np.testing.assert_allclose(result.values, expected, atol=1e-9)


def test_sampling_leaves_the_global_numpy_generator_alone() -> None:
    v, _ = pairwise_game(12, seed=2)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    shapley(v, 12, max_exact=4, max_evals=200)
    assert np.random.rand() == expected


@pytest.fixture(scope="module")
def linear() -> Linear:
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 1.0, size=(30, 30)).astype(np.float32)
    w[7, 5] = 0.0  # item 7 does nothing for item 5
    w[[2, 11, 19], 5] = [3.0, 2.5, 2.0]  # three items drive item 5
    return Linear(w, bias=np.linspace(0, 1, 30))


@pytest.mark.parametrize("history", [[2, 7, 11, 4, 9], list(range(26))], ids=["exact", "sampled"])
def test_history_values_add_up_and_give_an_ignored_item_zero(linear: Linear, history: list[int]) -> None:
    ex = Explainer(linear)
    expl = ex.explain_history(history, 5)
    assert expl.method == ("exact" if len(history) <= 10 else "permutation")
    assert expl.values.sum() == pytest.approx(expl.full_value - expl.base_value, abs=1e-5)
    assert expl.base_value == pytest.approx(linear.bias[5])  # the empty history
    assert expl.full_value == pytest.approx(float(linear.score([np.array(history)])[0, 5]))
    by_item = dict(zip(expl.items.tolist(), expl.values))
    assert by_item[7] == pytest.approx(0.0, abs=1e-6)
    for item in history:  # a linear model's Shapley value is the item's own weight
        assert by_item[item] == pytest.approx(linear.w[item, 5], abs=1e-5)


def test_itemknn_gives_an_item_never_seen_with_the_target_zero_attribution() -> None:
    # Users of items 0-3 never touch item 4's neighbourhood {4, 5, 6}: their cosine with item 5 is exactly 0.
    rows = [(u, i) for u in range(6) for i in (0, 1, 2, 3)] + [(u, i) for u in range(6, 12) for i in (4, 5, 6)]
    rows += [(12, 0), (12, 4), (13, 1), (13, 6)]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item"]).astype(str), name="two-blocks")
    model = ItemKNN(ItemKNNConfig(k=10, shrink=0.0)).fit(ds)
    idx = ds.item_index
    history = np.array([idx["2"], idx["4"], idx["6"], idx["3"]])
    expl = Explainer(model, ds).explain_history(history, idx["5"])
    values = dict(zip(expl.items.tolist(), expl.values))
    assert values[idx["2"]] == 0.0 and values[idx["3"]] == 0.0
    assert values[idx["4"]] > 0.1 and values[idx["6"]] > 0.1
    assert expl.values.sum() == pytest.approx(expl.full_value - expl.base_value, abs=1e-6)


def test_deleting_the_top_attributed_items_hurts_more_than_random_ones(linear: Linear) -> None:
    history = [0, 2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 19, 20, 21]
    ex = Explainer(linear)
    check = ex.deletion_check(history, 5, k=3, n_random=20)
    assert sorted(history[p] for p in check.removed) == [2, 11, 19]
    assert check.top_drop == pytest.approx(7.5, abs=1e-4)
    assert check.top_drop > 2 * check.random_drop > 0
    assert check.random_abs_change == pytest.approx(check.random_drop)  # weights are positive: every deletion lowers
    assert check.top_rank > check.random_rank >= check.rank


def test_histories_longer_than_max_players_group_the_oldest(linear: Linear) -> None:
    history = list(range(30)) + list(range(10))  # items 0-9 twice: each occurrence is its own player
    expl = Explainer(linear, max_players=20, max_evals=400).explain_history(history, 5)
    assert expl.method == "permutation"
    assert len(expl.labels) == 21 and expl.labels[0] == "Older history (20 items)"
    assert len(expl.members[0]) == 20 and expl.items[0] == -1
    assert expl.values.sum() == pytest.approx(expl.full_value - expl.base_value, abs=1e-5)
    w = linear.w[:, 5]
    # A repeat counts once (the model dedupes), so a repeated item's weight is shared by its two copies.
    np.testing.assert_allclose(expl.values[1:], np.concatenate([w[20:30], w[:10] / 2]), atol=1e-5)
    assert expl.values[0] == pytest.approx(w[10:20].sum() + w[:10].sum() / 2, abs=1e-5)


def test_explanations_are_cached_per_history_and_item(linear: Linear) -> None:
    ex = Explainer(linear, cache_size=2)
    first = ex.explain_history([1, 2, 3], 5)
    calls = linear.calls
    assert ex.explain_history(np.array([1, 2, 3]), 5) is first and linear.calls == calls
    ex.explain_history([1, 2], 5)
    ex.explain_history([1], 5)  # evicts the least recently used entry
    assert ex.explain_history([1, 2, 3], 5) is not first
    with pytest.raises(DataError, match="outside the catalogue"):
        ex.explain_history([1], 99)


def test_one_explainer_per_model_and_dataset_version_is_shared_with_its_explanations() -> None:
    """What the Explain and Blurbs pages do: both ask `explainer_for` and get one Explainer, one cache."""
    ds = genre_dataset()
    model = Linear(np.ones((ds.n_items, ds.n_items), np.float32))
    model.item_ids_ = [str(i) for i in ds.item_ids]
    explain_page, blurbs_page = explainer_for(model, ds, "genres|v1"), explainer_for(model, ds, "genres|v1")
    first = explain_page.explain_history([1, 2], 0)
    assert blurbs_page is explain_page and blurbs_page.explain_history([1, 2], 0) is first
    assert explainer_for(model, ds, "genres|v2") is not explain_page  # the data changed: its titles may differ
    model.version_ = "refit"
    assert explainer_for(model, ds, "genres|v1") is not explain_page  # new weights: new explanations


# ---- attributes ----------------------------------------------------------------------------------


def genre_dataset() -> Dataset:
    """t (target, Comedy|Romance) is very popular; c1, c2 Comedy; d1 Drama; h1 Horror; x1 Animation."""
    items = pd.DataFrame({"item_id": ["t", "c1", "c2", "d1", "h1", "x1", "x2", "x3", "x4", "x5"],
                          "title": ["Target", "Comedy A", "Comedy B", "Drama A", "Horror A", "X1", "X2", "X3", "X4",
                                    "X5"],
                          "genres": ["Comedy|Romance", "Comedy", "Comedy", "Drama", "Horror", "Animation",
                                     "Animation", "Animation", "Animation", "Animation"]})
    rows = [(f"u{u}", "t") for u in range(10)]
    rows += [(f"v{u}", i) for u, i in enumerate(np.repeat(items["item_id"][1:].to_numpy(), 2))]
    frame = pd.DataFrame(rows, columns=["user", "item"]).assign(timestamp=np.arange(len(rows)))
    return build_dataset(frame, name="genres", items=items)


@pytest.mark.parametrize("driver", ["comedy", "drama"])
def test_attribute_reason_appears_only_when_it_is_true(driver: str) -> None:
    ds = genre_dataset()
    idx = ds.item_index
    w = np.zeros((ds.n_items, ds.n_items), np.float32)
    drivers = ["c1", "c2"] if driver == "comedy" else ["d1"]
    w[[idx[i] for i in drivers], idx["t"]] = 1.0
    model = Linear(w)
    model.item_ids_ = [str(i) for i in ds.item_ids]  # trained on this dataset's catalogue
    ex = Explainer(model, ds)
    history = np.array([idx[i] for i in ("c1", "d1", "c2", "h1")])
    attrs = ex.explain_attributes(history, idx["t"])
    values = dict(zip(attrs.labels, attrs.values))
    assert values["Genre: Romance"] == 0.0  # the target is a Romance, but nothing in the history is
    assert attrs.values.sum() == pytest.approx(attrs.full_value - attrs.base_value)
    sentence = ex.reasons(ex.explain_history(history, idx["t"]), attrs)
    if driver == "comedy":
        assert values["Genre: Comedy"] == pytest.approx(2.0) and values["Other history items"] == 0.0
        assert "Comedy A" in sentence and "Comedy B" in sentence and "Genre: Comedy" in sentence
        assert "Drama A" not in sentence
    else:
        assert values["Genre: Comedy"] == 0.0 and values["Other history items"] == pytest.approx(1.0)
        assert "Drama A" in sentence and "Comedy" not in sentence


def test_item_attributes_cover_genres_decade_and_popularity() -> None:
    n = 200  # enough items for every popularity bucket
    items = pd.DataFrame({"item_id": [str(i) for i in range(n)], "genres": ["Comedy|Drama", None, "Drama"] + ["X"] * (n - 3),
                          "year": pd.array([1994, None, 2003] + [2000] * (n - 3), dtype="Int16")})
    popularity = np.concatenate([[1000, 1, 195], np.arange(10, 10 + n - 3)])
    attrs = explain.item_attributes(normalise_items(items), popularity)
    names = lambda i: {attrs.names[a] for a in attrs.of(i)}
    assert names(0) == {"Genre: Comedy", "Genre: Drama", "Released in the 1990s", "Blockbuster (top 1% by popularity)"}
    assert names(1) == {"Long tail (bottom half by popularity)"}
    assert names(2) == {"Genre: Drama", "Released in the 2000s", "Very popular (top 10%)"}
    assert names(3) == {"Genre: X", "Released in the 2000s", "Long tail (bottom half by popularity)"}
    assert names(150) & {"Popular (top half)"}


def test_reasons_say_so_when_no_past_item_helps() -> None:
    w = -np.ones((4, 4), np.float32)
    ex = Explainer(Linear(w, bias=np.ones(4)))
    sentence = ex.reasons(ex.explain_history([0, 1], 3))
    assert sentence.startswith("None of the past items raises the score")


# ---- global view ---------------------------------------------------------------------------------


def test_global_view_finds_the_items_that_drive_recommendations(linear: Linear) -> None:
    rng = np.random.default_rng(4)
    histories = [np.append(rng.choice(np.delete(np.arange(30), [2, 5]), 5, replace=False), 2) for _ in range(12)]
    ex = Explainer(linear)
    frame = ex.global_view(histories, items=[5] * 12)
    assert set(frame["row"]) == set(range(12)) and {"item", "attribute"} == set(frame["kind"])
    summary = summarise_global(frame)
    items = summary[summary["kind"] == "item"]
    top = items.iloc[0]
    assert top["label"] == "item 2" and top["top_reason"] == 12 and top["appears"] == 12
    assert top["mean"] == pytest.approx(3.0, abs=1e-4)


def test_global_view_defaults_to_each_users_top_recommendation(linear: Linear) -> None:
    histories = [np.array([1, 2]), np.array([3])]
    frame = Explainer(linear).global_view(histories)
    tops = Explainer(linear).top_items(histories, 1)[:, 0]
    assert frame.groupby("row")["item"].first().tolist() == tops.tolist()
    assert not set(tops) & {1, 2, 3}  # seen items are never the recommendation


# ---- text tower ----------------------------------------------------------------------------------


def test_text_tower_words_add_up_to_the_models_own_score() -> None:
    from movie_fixtures import index_of, movie_dataset

    from recsys_core.models.text_tower import TextTower

    ds = movie_dataset()
    model = TextTower().fit(ds)
    ex = Explainer(model, ds)
    sci_fi_fan = [index_of(ds, t) for t in ("Star Wars", "Alien", "Blade Runner", "The Matrix")]
    item = index_of(ds, "Contact")  # "Contact (1997). Genres: Drama, Sci-Fi."
    expl = ex.explain_text(sci_fi_fan, item)
    assert expl.labels == tuple(model.item_texts_[item].split())
    assert expl.full_value == pytest.approx(float(model.score([np.array(sci_fi_fan)])[0, item]), abs=1e-5)
    assert expl.values.sum() == pytest.approx(expl.full_value - expl.base_value, abs=1e-9)
    words = dict(zip(expl.labels, expl.values))
    assert words["Sci-Fi."] > 2 * words["Drama,"]  # the genre this user watches matters more
    with pytest.raises(ModelError, match="reads item text"):
        Explainer(Linear(np.zeros((3, 3)))).explain_text([0], 1)
