"""members=K: K copies of a sequential model trained from their own seeds, scoring as the mean of their scores.
Each member is exactly the run its seed gives alone; the saved folder keeps every member; a Cancel keeps the
finished members only; the CPU budget is shared; the vectors the pages show rank as the scores do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys_core.errors import ModelError
from recsys_core.models.base import load_model
from recsys_core.models.ensemble import improved, member_config
from recsys_core.progress import Progress
from recsys_core.training.experiment import for_every_member, make_model, make_split
from tests.test_jobs import _sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The encoders alone (transitions off): the ensemble's own scores are what these tests compare exactly.
SMALL = {"hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16, "epochs": 6, "patience": 2, "eval_every": 1,
         "valid_share": 0.0, "seed": 3, "transitions": "off"}


@pytest.fixture(scope="module")
def data():
    ds = _sequences(150, 25, 10)  # users walking the item cycle from their own start
    return ds, make_split(ds)


@pytest.fixture(scope="module")
def pair(data):
    ds, split = data
    return make_model("bert4rec", {**SMALL, "members": 2}).fit(ds, split=split)


def test_two_members_score_the_mean_of_the_runs_their_seeds_give_alone(data, pair):
    ds, split = data
    # seed 3 with two members: members 6 and 7 (seed x members + i), so seeds 3 and 4 share no member
    alone = [make_model("bert4rec", {**SMALL, "seed": s}).fit(ds, split=split) for s in (6, 7)]
    histories = split.test.histories
    mean = (alone[0].score(histories) + alone[1].score(histories)) / 2
    torch.testing.assert_close(pair.score(histories), mean, rtol=1e-5, atol=1e-5)
    items = np.array([4, 0, 17])
    torch.testing.assert_close(pair.score_items(histories, items), mean[:, items], rtol=1e-5, atol=1e-5)
    joined = pair._output_layer()[0]
    assert pair._output_layer()[0] is joined  # joined once, not per scored request
    report = pair.fit_report()["members"]
    assert report["requested"] == report["trained"] == 2
    assert [m["seed"] for m in report["each"]] == [6, 7]
    assert [m["best_metric"] for m in report["each"]] == [a.fit_report()["best_metric"] for a in alone]
    assert 0 < report["valid"]["ndcg@10"] <= 1


def test_one_member_is_the_model_as_before(data):
    ds, split = data
    one = make_model("bert4rec", {**SMALL, "members": 1}).fit(ds, split=split)
    plain = make_model("bert4rec", SMALL).fit(ds, split=split)
    torch.testing.assert_close(one.score(split.test.histories), plain.score(split.test.histories), rtol=0, atol=0)
    assert "members" not in one.fit_report()
    assert not any(name.startswith("member") for name in one.state_tensors())


def test_a_saved_ensemble_loads_with_every_member(data, pair, tmp_path):
    _, split = data
    pair.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert sum(name.startswith("member1.") for name in loaded.state_tensors()) > 0
    torch.testing.assert_close(loaded.score(split.test.histories), pair.score(split.test.histories), rtol=0, atol=0)


def test_a_folder_whose_weights_hold_more_members_than_its_config_is_refused(pair, tmp_path):
    pair.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["members"] = 1  # an edited folder: two members' weights under a one-member config
    config.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="members=1"):
        load_model(tmp_path / "m")


def test_the_vectors_the_pages_show_rank_as_the_scores_do(data, pair):
    _, split = data
    users = pair.user_embeddings(split.test.histories)
    items = pair.item_embeddings()
    assert users.shape[1] == items.shape[1] == 2 * SMALL["hidden"]
    np.testing.assert_allclose(users @ items.T, pair.score(split.test.histories).numpy(), rtol=1e-4, atol=1e-4)


def test_a_cancel_in_the_second_member_keeps_the_first_alone(data):
    ds, split = data

    def on_event(event):
        if "member 2 of 2" in event.message:
            progress.cancel()

    progress = Progress(on_event)
    model = make_model("sasrec", {**SMALL, "members": 2}).fit(ds, split=split, progress=progress)
    first = make_model("sasrec", {**SMALL, "seed": 6}).fit(ds, split=split)
    assert model.fit_report()["members"]["trained"] == 1
    torch.testing.assert_close(model.score(split.test.histories), first.score(split.test.histories), rtol=0, atol=0)


def test_with_refit_every_member_is_refit_after_all_trained_on_the_training_items_alone(data):
    """A refit draws its negatives from the training and validation items: the next member must not train on them."""
    ds, split = data
    sampled = {**SMALL, "members": 2, "loss": "sampled", "n_negatives": 8, "seed": 1}
    said = []
    progress = Progress(lambda event: said.append(event.message))
    refitted = make_model("sasrec", {**sampled, "refit": True}).fit(ds, split=split, progress=progress).fit_report()
    assert [m for m in said if m.startswith("refitting")][1].startswith("refitting member 2 of 2 on training")
    early = make_model("sasrec", sampled).fit(ds, split=split).fit_report()
    each = refitted["members"]["each"]
    assert [m["best_metric"] for m in each] == [m["best_metric"] for m in early["members"]["each"]]
    assert refitted["refit"]["done"] and each[1]["refit"]["done"]
    assert "refit" not in each[0]  # member 0's is the report's own


def test_members_share_the_cpu_budget_and_keep_their_own_checkpoints(tmp_path):
    model = make_model("sasrec", {**SMALL, "members": 3, "cpu_budget_s": 90, "checkpoint_dir": str(tmp_path)})
    configs = [member_config(model.config.train, i, 3) for i in range(3)]
    assert [c.cpu_budget_s for c in configs] == [30, 30, 30]
    assert [c.seed for c in configs] == [9, 10, 11]
    assert len({c.checkpoint_dir for c in configs}) == 3


def test_an_under_trained_ensemble_needs_the_cpu_its_first_member_needs_once_per_member():
    verdict = {"under_trained": True, "needs_cpu_s": 45.0, "needs_method": "..."}
    assert for_every_member(verdict, {"members": {"trained": 2}})["needs_cpu_s"] == 90.0
    assert for_every_member(verdict, {})["needs_cpu_s"] == 45.0  # one model
    assert for_every_member({"under_trained": False}, {"members": {"trained": 3}}) == {"under_trained": False}


def test_an_ensemble_is_a_no_improvement_run_only_when_no_member_improved():
    assert improved([{"improved": False}, {"improved": True}]) is True  # the CLI said "no_improvement" here
    assert improved([{"improved": False}, {"improved": False}]) is False
    assert improved([{"improved": None}, {}]) is None
