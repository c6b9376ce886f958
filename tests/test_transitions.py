"""transitions="auto": how often each item followed a history's last item, added to a sequential model's scores
with a weight chosen on validation. The table the model keeps counts the training and validation sequences and
never a test item; it is saved with the model; a tie on validation keeps the encoder alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ModelError
from recsys_core.models.base import load_model
from recsys_core.models.transitions import TransitionPrior, last_items
from recsys_core.training.experiment import make_model, make_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CYCLE, LENGTH = 20, 10
# an encoder trained for a few steps: it has not learnt the successions yet, the table has
WEAK = {"hidden": 16, "layers": 1, "max_len": 8, "batch_size": 16, "max_steps": 4, "eval_every": 1,
        "valid_share": 0.0, "seed": 0, "transitions": "auto"}


def _cycle_with_own_last_items(n_users: int = 120):
    """Users walk a cycle of items from their own start; each user's last (test) item is theirs alone."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(N_CYCLE))
        rows += [(f"u{u}", f"i{(start + t) % N_CYCLE}", t) for t in range(LENGTH)]
        rows.append((f"u{u}", f"last{u}", LENGTH))
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="cycle-own-last")


@pytest.fixture(scope="module")
def data():
    ds = _cycle_with_own_last_items()
    return ds, make_split(ds)


@pytest.fixture(scope="module")
def fitted(data):
    ds, split = data
    return make_model("sasrec", WEAK).fit(ds, split=split)


def test_the_prior_is_the_z_score_of_log_counts_over_the_whole_catalogue():
    empty = np.array([], dtype=np.int64)  # a user whose every item is held out: no pair, and none across it
    table = TransitionPrior.count([np.array([0, 1, 2]), empty, np.array([0, 1]), np.array([1, 0]), np.array([3])], 5)
    prior = table.prior(torch.tensor([0, 1, 3, -1]))
    row = np.array([0, math.log(3), 0, 0, 0])  # 0 was followed by 1 twice
    np.testing.assert_allclose(prior[0].numpy(), (row - row.mean()) / row.std(), rtol=1e-6)
    assert prior[1].argmax() in (0, 2) and prior[1, 0] == prior[1, 2]  # 1 -> 2 once, 1 -> 0 once
    assert not prior[2:].any()  # nothing followed item 3; an empty history has no last item
    # a subset of the catalogue keeps each item's value (z-scored over the whole catalogue, not the subset)
    subset = torch.tensor([4, 1])
    torch.testing.assert_close(table.prior(torch.tensor([0, 1]), subset), prior[:2, subset])


def test_auto_weighs_the_prior_on_validation_and_it_lifts_a_weak_encoder(data, fitted):
    _, split = data
    report = fitted.fit_report()["transitions"]
    ndcg = report["valid_ndcg@10"]
    assert report["weight"] > 0 and ndcg[str(report["weight"])] == max(ndcg.values()) > ndcg["0.0"]
    histories = split.test.histories[:40]
    with_prior = fitted.score(histories)
    prior, fitted.transitions_ = fitted.transitions_, None
    try:
        alone = fitted.score(histories)
    finally:
        fitted.transitions_ = prior
    # each history's next cycle item (what the table ranks first) is ranked first more often with the prior
    successor = prior.prior(last_items(histories)).argmax(1)
    assert (with_prior.argmax(1) == successor).float().mean() > (alone.argmax(1) == successor).float().mean()


def test_scores_are_the_encoders_dot_products_plus_the_weighted_prior(data, fitted):
    """The vectors the Embeddings page maps are the encoder's; the prior is added beside them, at its weight."""
    histories = data[1].test.histories[:30]
    dots = fitted.user_embeddings(histories) @ fitted.item_embeddings().T
    prior = fitted.transitions_.weight * fitted.transitions_.prior(last_items(histories)).numpy()
    np.testing.assert_allclose(fitted.score(histories).numpy(), dots + prior, rtol=1e-4, atol=1e-4)


def test_the_kept_table_counts_training_and_validation_items_and_never_a_test_item(data, fitted):
    _, split = data
    table = fitted.transitions_
    known = split.train_with_validation()
    assert fitted.fit_report()["transitions"]["counted"] == "training and validation sequences"
    assert round(float(table.logs.expm1().sum())) == sum(len(s) - 1 for s in known)
    test_items = {int(t[0]) for t in split.test.targets}
    assert test_items and not test_items & set(table.indices.tolist())


def test_a_saved_model_keeps_its_prior_and_scores_a_subset_as_the_catalogue(data, fitted, tmp_path):
    _, split = data
    fitted.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    histories = split.test.histories
    torch.testing.assert_close(loaded.score(histories), fitted.score(histories), rtol=0, atol=0)
    items = np.array([3, 0, 11])
    torch.testing.assert_close(loaded.score_items(histories, items), loaded.score(histories)[:, items], rtol=1e-5,
                               atol=1e-5)


def test_a_folder_whose_weights_hold_a_prior_its_config_turns_off_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["transitions"] = "off"  # an edited folder: its scores would silently keep the prior
    config.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="transitions=off"):
        load_model(tmp_path / "m")


def test_a_model_saved_before_the_setting_existed_loads_without_a_prior(data, tmp_path):
    ds, split = data
    make_model("sasrec", {**WEAK, "transitions": "off"}).fit(ds, split=split).save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    del meta["config"]["transitions"]  # as every sequential model saved before 2026-12-07
    config.write_text(json.dumps(meta))
    old = load_model(tmp_path / "m")
    assert old.config.transitions == "off" and not old.capabilities.transition_prior


def test_off_adds_nothing_and_a_fit_without_validation_keeps_the_encoder_alone(data):
    ds, split = data
    off = make_model("sasrec", {**WEAK, "transitions": "off"}).fit(ds, split=split)
    assert off.transitions_ is None and "transitions" not in off.fit_report()
    assert not any(name.startswith("transitions.") for name in off.state_tensors())
    unsplit = make_model("sasrec", WEAK).fit(ds)
    assert unsplit.transitions_ is None
    assert unsplit.fit_report()["transitions"] == {"weight": 0.0, "reason": "no validation users to weigh it on"}


def test_auto_is_the_default_of_every_sequential_family():
    for family in ("sasrec", "bert4rec", "hybrid"):
        assert make_model(family, {}).config.transitions == "auto"


def test_with_refit_the_weight_is_chosen_on_the_early_stopped_encoder(data, fitted):
    """The refit trains on the validation items: weighed after it, validation would reward whatever it memorised."""
    ds, split = data
    refitted = make_model("sasrec", {**WEAK, "max_steps": 8, "refit": True}).fit(ds, split=split)
    alone = make_model("sasrec", {**WEAK, "max_steps": 8}).fit(ds, split=split)
    assert refitted.fit_report()["refit"]["done"]
    weighed = [{k: v for k, v in m.fit_report()["transitions"].items() if k != "cpu_s"} for m in (refitted, alone)]
    assert weighed[0] == weighed[1] and refitted.fit_report()["transitions"]["cpu_s"] > 0
    assert refitted.transitions_.weight > 0
    histories = split.test.histories
    assert not torch.equal(refitted.score(histories), alone.score(histories))  # the refitted encoder scores


def test_the_prior_is_added_a_few_users_at_a_time_on_a_large_catalogue(data, fitted, monkeypatch):
    _, split = data
    whole = fitted.score(split.test.histories)
    monkeypatch.setattr("recsys_core.models.transitions.CELLS", 2 * fitted.n_items_)  # two users a chunk
    torch.testing.assert_close(fitted.score(split.test.histories), whole, rtol=0, atol=0)
