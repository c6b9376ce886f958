"""The global explanation scores the coalitions of many users together, one `score_items` call per batch,
and gives exactly what explaining each user alone gives; the permutation sampler reproduces shap's
Permutation explainer; cancel stops it between batches."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.data.demo import load_demo
from recsys_core.insight.explain import Explainer, shapley
from recsys_core.progress import Progress
from recsys_core.training.experiment import make_model
from tests.movie_fixtures import movie_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_ease():
    ds = load_demo()
    model = make_model("ease")
    model.fit(ds)
    return ds, model


def _sample(ds, n: int) -> list[np.ndarray]:
    users = np.sort(np.random.default_rng(0).choice(ds.n_users, n, replace=False))
    return [ds.history(int(u)) for u in users]


def _per_user(explainer: Explainer, histories, items, max_evals: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for history, item in zip(histories, items):
        h = explainer.explain_history(history, int(item), max_evals)
        a = explainer.explain_attributes(history, int(item))
        out.append((h.values[h.items >= 0], a.values))
    return out


def _assert_same(frame, expected) -> None:
    for row, (history_values, attribute_values) in enumerate(expected):
        part = frame[frame["row"] == row]
        np.testing.assert_allclose(part[part["kind"] == "item"]["value"], history_values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(part[part["kind"] == "attribute"]["value"], attribute_values, rtol=1e-5, atol=1e-6)


def test_the_sampler_reproduces_shaps_permutation_explainer() -> None:
    shap = pytest.importorskip("shap")
    rng = np.random.default_rng(1)
    for n, budget in ((11, 500), (40, 500), (120, 1000)):
        w, mix = rng.normal(size=n), rng.normal(size=(n, n))

        def game(masks, w=w, mix=mix):
            return masks @ w + np.sin(masks.astype(float) @ mix).sum(1)  # interactions: not additive

        explainer = shap.explainers.Permutation(lambda x, g=game: g(x > 0.5),
                                                shap.maskers.Independent(np.zeros((1, n)), max_samples=1), seed=0)
        expected = explainer(np.ones((1, n)), max_evals=budget, silent=True)
        ours = shapley(game, n, max_exact=10, max_evals=budget)
        assert ours.method == "permutation"
        np.testing.assert_allclose(ours.values, expected.values[0], atol=1e-10)
        assert ours.values.sum() == pytest.approx(ours.full - ours.base)


def test_global_view_on_the_demo_equals_explaining_each_user_alone(demo_ease) -> None:
    ds, model = demo_ease
    histories = _sample(ds, 12)
    assert any(len(h) > 10 for h in histories) and any(len(h) <= 10 for h in histories)  # both methods
    frame = Explainer(model, ds).global_view(histories, max_evals=500)
    alone = Explainer(model, ds)
    _assert_same(frame, _per_user(alone, histories, alone.top_items(histories, 1)[:, 0], 500))


def test_global_view_of_an_order_aware_transformer_equals_each_user_alone() -> None:
    ds = movie_dataset(n_users=40, per_user=14)
    model = make_model("sasrec", {"hidden": 16, "layers": 1, "max_len": 16, "epochs": 1, "batch_size": 32})
    model.fit(ds)
    histories = [ds.history(u) for u in range(6)]
    frame = Explainer(model, ds).global_view(histories, max_evals=120)
    alone = Explainer(model, ds)
    _assert_same(frame, _per_user(alone, histories, alone.top_items(histories, 1)[:, 0], 120))


class _Counting:
    """Spy on a real model's `score_items` (every other attribute is the model's own)."""

    def __init__(self, model) -> None:
        self._model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def score_items(self, histories, items):
        self.calls += 1
        return self._model.score_items(histories, items)


def test_global_view_scores_many_users_per_model_call(demo_ease) -> None:
    ds, model = demo_ease
    spy = _Counting(model)
    histories = _sample(ds, 100)
    explainer = Explainer(model, ds)
    explainer.model = spy
    frame = explainer.global_view(histories, max_evals=500)
    assert frame["row"].nunique() == 100
    assert spy.calls < 40  # user by user it is 200 calls (one history and one attribute game each)


def test_progress_moves_within_a_group_and_cancel_stops_between_batches(demo_ease) -> None:
    ds, model = demo_ease
    events, holder = [], []

    def on_event(event) -> None:
        events.append(event)
        if not event.message.startswith("explained 0 "):
            holder[0].cancel()  # as soon as the first group of users is done

    progress = Progress(callback=on_event)
    holder.append(progress)
    frame = Explainer(model, ds).global_view(_sample(ds, 200), progress=progress, max_evals=500)
    done = int(events[-1].message.split()[1])
    assert 0 < done < 200 and frame["row"].nunique() == done  # nothing scored after the cancel
    within_first_group = [e for e in events if e.message.startswith("explained 0 ")]
    assert len(within_first_group) > 2  # the bar moves batch by batch, not only once per group
    assert [e.step for e in events] == sorted(e.step for e in events) and events[-1].total > events[-1].step
