"""A blend of sequential models: its parts are exactly the runs their settings and seeds give alone, it scores as the
mean of all their members' logits (plus one prior weighed on validation), a saved blend loads whole, a Cancel keeps
the finished parts, the budget is shared by members, and a part spelled wrong is refused by name before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys_core.errors import ConfigError, ModelError
from recsys_core.models.base import load_model
from recsys_core.models.blend import BlendConfig, parse_parts, part_configs
from recsys_core.models.settings import build_config
from recsys_core.progress import Progress
from recsys_core.training.experiment import make_model, make_split
from tests.test_jobs import _sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOOP = {"batch_size": 16, "epochs": 6, "patience": 2, "eval_every": 1, "valid_share": 0.0}
BERT = "bert4rec@hidden=16;layers=1;max_len=12;members=2"
SAS = "sasrec@hidden=8;heads=1;layers=1;max_len=12;lr=0.004"
SMALL = {**LOOP, "seed": 3, "transitions": "off", "parts": f"{BERT} + {SAS}"}


@pytest.fixture(scope="module")
def data():
    ds = _sequences(150, 25, 10)  # users walking the item cycle from their own start
    return ds, make_split(ds)


@pytest.fixture(scope="module")
def blend(data):
    ds, split = data
    return make_model("blend", SMALL).fit(ds, split=split)


def _alone(data, family: str, settings: dict):
    ds, split = data
    return make_model(family, {**LOOP, "transitions": "off", **settings}).fit(ds, split=split)


def test_a_blend_scores_the_members_mean_of_the_runs_its_parts_give_alone(data, blend):
    _, split = data
    # blend seed 3 with two parts: part seeds 6 and 7 (seed x parts + i); part 0's two members: 12 and 13
    bert = _alone(data, "bert4rec", {"hidden": 16, "layers": 1, "max_len": 12, "members": 2, "seed": 6})
    sas = _alone(data, "sasrec", {"hidden": 8, "heads": 1, "layers": 1, "max_len": 12, "lr": 0.004, "seed": 7})
    histories = split.test.histories
    mean = (2 * bert.score(histories) + sas.score(histories)) / 3  # three members, each counted once
    torch.testing.assert_close(blend.score(histories), mean, rtol=1e-5, atol=1e-5)
    items = np.array([4, 0, 17])
    torch.testing.assert_close(blend.score_items(histories, items), mean[:, items], rtol=1e-5, atol=1e-5)
    members = blend.fit_report()["members"]
    assert members["requested"] == members["trained"] == 3
    assert [(m["part"], m["seed"]) for m in members["each"]] == [(0, 12), (0, 13), (1, 7)]
    assert [p["family"] for p in blend.fit_report()["parts"]] == ["bert4rec", "sasrec"]
    assert 0 < members["valid"]["ndcg@10"] <= 1


def test_the_vectors_the_pages_show_rank_as_the_scores_do(data, blend):
    _, split = data
    users, items = blend.user_embeddings(split.test.histories), blend.item_embeddings()
    assert users.shape[1] == items.shape[1] == 2 * 16 + 8
    np.testing.assert_allclose(users @ items.T, blend.score(split.test.histories).numpy(), rtol=1e-4, atol=1e-4)


def test_a_saved_blend_loads_whole_and_a_folder_with_more_parts_than_its_config_is_refused(data, blend, tmp_path):
    _, split = data
    loaded = load_model(blend.save(tmp_path / "b"))
    torch.testing.assert_close(loaded.score(split.test.histories), blend.score(split.test.histories), rtol=0, atol=0)
    config = tmp_path / "b" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["parts"] = BERT  # an edited folder: two parts' weights under a one-part config
    config.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="parts \\[0, 1\\], but config.json names 1"):
        load_model(tmp_path / "b")


def test_the_prior_is_weighed_over_the_blend_and_added_to_the_parts_mean(data, blend):
    ds, split = data
    auto = make_model("blend", {**SMALL, "transitions": "auto"}).fit(ds, split=split)
    prior = auto.fit_report()["transitions"]
    assert prior["counted"] == "training and validation sequences" and set(prior["valid_ndcg@10"]) >= {"0.0", "0.1"}
    histories = split.test.histories
    expected = blend.score(histories)  # the same parts: runs are deterministic
    if auto.transitions_ is not None:
        auto.transitions_.add_to(expected, histories)
    torch.testing.assert_close(auto.score(histories), expected, rtol=1e-5, atol=1e-5)
    assert all(p.config.transitions == "off" for p in auto.parts_)  # no part weighs a prior of its own


def test_a_cancel_in_the_second_part_keeps_the_first_alone(data):
    ds, split = data

    def on_event(event):
        if "blend part 2 of 2" in event.message:
            progress.cancel()

    progress = Progress(on_event)
    model = make_model("blend", SMALL).fit(ds, split=split, progress=progress)
    first = _alone(data, "bert4rec", {"hidden": 16, "layers": 1, "max_len": 12, "members": 2, "seed": 6})
    assert [p.family for p in model.parts_] == ["bert4rec"] and model.fit_report()["members"]["trained"] == 2
    torch.testing.assert_close(model.score(split.test.histories), first.score(split.test.histories), rtol=0, atol=0)


def test_parts_share_the_loop_settings_the_budget_by_members_and_keep_their_own_checkpoints():
    config = build_config(BlendConfig, {**SMALL, "cpu_budget_s": 300.0, "checkpoint_dir": "ck", "lr": 0.001})
    (_, bert), (_, sas) = part_configs(config)
    assert (bert.train.cpu_budget_s, sas.train.cpu_budget_s) == (200.0, 100.0)  # 2 members and 1 of 3
    assert (bert.train.checkpoint_dir, sas.train.checkpoint_dir) == ("ck/part0", "ck/part1")
    assert (bert.train.lr, sas.train.lr) == (0.001, 0.004)  # the blend's, unless the part sets its own
    assert bert.train.batch_size == sas.train.batch_size == 16 and bert.valid_share == sas.valid_share == 0.0
    seeds = {cfg.train.seed for s in (0, 1, 2) for _, cfg in part_configs(build_config(BlendConfig, {"seed": s}))}
    assert len(seeds) == 6  # three seeds' blends share no part


@pytest.mark.parametrize("parts, says", [
    ("bert4rec + ease", "part 2: 'ease' cannot be part of a blend"),
    ("blend", "part 1: 'blend' cannot be part of a blend"),
    ("bert4rec@hidden", "part 1 (bert4rec): 'hidden' is not name=value"),
    ("sasrec@hidden=48;heads=5", "part 1 (sasrec): hidden=48 is not a multiple of heads=5"),
    ("bert4rec + sasrec@size=3", "part 2 (sasrec): SASRecConfig has no setting 'size'"),
    ("bert4rec@transitions=auto", "part 1 (bert4rec): transitions cannot be set in a part"),
    ("bert4rec@refit=true", "part 1 (bert4rec): refit cannot be set in a part"),
    ("sasrec@seed=4", "part 1 (sasrec): train.seed cannot be set in a part"),
    ("sasrec@checkpoint_dir=/etc", "part 1 (sasrec): train.checkpoint_dir cannot be set in a part"),
    ("sasrec@dropout=1.5", "part 1 (sasrec): 1.5 is not allowed"),
    ("hybrid@text_tower_dir=/srv/other", "part 1 (hybrid): text_tower_dir cannot be set in a part"),  # outside the jail
    ("sasrec + hybrid@text_model_name=/srv/x", "part 2 (hybrid): text_model_name cannot be set in a part"),
])
def test_a_part_spelled_wrong_is_refused_by_name_with_what_to_do(parts: str, says: str):
    with pytest.raises(ConfigError) as err:
        build_config(BlendConfig, {"parts": parts})
    assert err.value.setting == "parts" and says in err.value.message, err.value.message
    assert err.value.hint


def test_values_read_as_json_where_they_are_and_a_plus_inside_a_number_is_not_a_new_part():
    assert parse_parts("sasrec@lr=1e+3;block=ligr;amp=true + bert4rec") == [
        ("sasrec", {"lr": 1000.0, "block": "ligr", "amp": True}), ("bert4rec", {})]


def test_without_validation_users_a_blend_trains_and_is_not_called_a_run_that_never_improved(data):
    """No split: no validation, so no early stop, no weighed prior, and "improved" unknown (None), which a run record
    must not read as "no improvement" (False)."""
    ds, _ = data
    model = make_model("blend", {**SMALL, "epochs": 2, "transitions": "auto"}).fit(ds)
    report = model.fit_report()
    assert report["improved"] is None and "valid" not in report["members"]
    assert report["transitions"] == {"weight": 0.0, "reason": "no validation users to weigh it on"}
    assert model.score([np.array([1, 2, 3])]).shape == (1, ds.n_items)
