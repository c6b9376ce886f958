"""refit=true: after early stopping, the sequential models train again from the same start on the training and
validation items for the steps at which validation peaked. The refit is exactly such a fresh run; it never reads a
test target; where it cannot run (a temporal split, a CPU budget that cannot pay for it, a Cancel) the early-stopped
model stays and the report says why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import EvalSet, Split
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models.refit import best_step
from recsys_core.progress import Progress
from recsys_core.training.experiment import make_model, make_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A constant learning rate after no warm-up: the refit's schedule (planned for the whole first run) and a fresh
# run's (planned for its own steps) are then the same, so the two can be compared weight for weight. The encoders
# alone: the transition prior's weighing around a refit is test_transitions.py's.
SMALL = {"hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16, "epochs": 12, "patience": 2, "eval_every": 1,
         "valid_share": 0.0, "warmup_frac": 0.0, "lr_floor": 1.0, "seed": 5, "transitions": "off"}


@pytest.fixture(scope="module")
def data():
    """Each user walks the item cycle from a random start, with a timestamp per step."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(200):
        start = int(rng.integers(30))
        rows += [(f"u{u}", f"i{(start + t) % 30}", 1000 * u + t) for t in range(int(rng.integers(6, 14)))]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="cycles")
    return ds, make_split(ds)


def test_a_refit_trains_on_everything_before_each_test_item(data):
    _, split = data
    refit = split.train_with_validation()
    for user, history in zip(split.test.users, split.test.histories):
        np.testing.assert_array_equal(refit[user], history)  # the validation item is in it, the test item is not
    assert sum(map(len, refit)) == sum(map(len, split.train)) + len(split.valid)


def test_a_refit_is_a_fresh_run_on_training_and_validation_items_to_the_best_step(data):
    ds, split = data
    model = make_model("sasrec", {**SMALL, "refit": True}).fit(ds, split=split)
    report = model.fit_report()["refit"]
    steps = best_step(model.training_history(), model.fit_report()["best_epoch"])
    assert report["done"] and report["steps"] == steps < model.fit_report()["steps"]  # patience ran past the best
    assert report["added_items"] == len(split.valid)
    everything = Split(split.kind, split.train_with_validation(), EvalSet(np.zeros(0, np.int32), [], []), split.test,
                       split.n_items)
    fresh = make_model("sasrec", {**SMALL, "max_steps": steps, "patience": 0}).fit(ds, split=everything)
    torch.testing.assert_close(model.score(split.test.histories), fresh.score(split.test.histories), rtol=0, atol=0)
    assert evaluate(model, split.test, ks=(10,))["hr@10"] > 0.8  # it learned the cycle


def test_the_refit_reads_no_test_target(data):
    ds, split = data
    hidden = EvalSet(split.test.users, split.test.histories, [np.array([29]) for _ in split.test.users])
    poisoned = Split(split.kind, split.train, split.valid, hidden, split.n_items)
    a = make_model("sasrec", {**SMALL, "refit": True}).fit(ds, split=split)
    b = make_model("sasrec", {**SMALL, "refit": True}).fit(ds, split=poisoned)
    torch.testing.assert_close(a.score(split.valid.histories), b.score(split.valid.histories), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["temporal", "budget"])
def test_a_refit_that_cannot_run_keeps_the_early_stopped_model_and_says_why(data, case):
    ds, split = data
    settings = {**SMALL, "refit": True}
    if case == "temporal":
        split = make_split(ds, "temporal")
    else:  # the budget ends the first run at its best, so nothing is left to pay for the refit
        settings.update(patience=0, epochs=10_000, cpu_budget_s=0.3)
    model = make_model("sasrec", settings).fit(ds, split=split)
    plain = make_model("sasrec", {**settings, "refit": False}).fit(ds, split=split)
    report = model.fit_report()["refit"]
    assert not report["done"]
    assert ("leave-one-out" if case == "temporal" else "CPU budget") in report["reason"]
    if case == "temporal":  # same seed, same run: the model is the early-stopped one (a budget stop is load-bound)
        torch.testing.assert_close(model.score(split.test.histories), plain.score(split.test.histories), rtol=0, atol=0)


def test_a_cancelled_refit_keeps_the_early_stopped_model(data):
    ds, split = data

    def on_event(event):
        if event.message.startswith("refitting"):
            progress.cancel()

    progress = Progress(on_event)
    model = make_model("sasrec", {**SMALL, "refit": True}).fit(ds, split=split, progress=progress)
    plain = make_model("sasrec", SMALL).fit(ds, split=split)
    assert model.fit_report()["refit"] == {"done": False, "reason": "cancelled: the early-stopped model is kept"}
    torch.testing.assert_close(model.score(split.test.histories), plain.score(split.test.histories), rtol=0, atol=0)
