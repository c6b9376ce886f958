"""The split bench/peers.py hands the peer libraries is exactly our leave-one-out, user by user.

Runs in the main venv only: the export and its reader need numpy, not RecTools or RecBole.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peers
from peers_worker import read_split

from recsys_core.data.demo import load_demo
from recsys_core.data.splits import leave_one_out
from recsys_core.models.sasrec import SASRec


@pytest.fixture(scope="module")
def demo_split():
    return leave_one_out(load_demo())


def test_export_matches_leave_one_out_user_by_user(demo_split, tmp_path):
    peers.export_split(demo_split, tmp_path, seeds=[0], max_valid_users=5000, name="demo")
    assert peers.check_export(demo_split, tmp_path) == len(demo_split.test) > 1000
    data = read_split(tmp_path)
    for i in (0, len(demo_split.test) // 2, len(demo_split.test) - 1):
        user = demo_split.test.users[i]
        full = demo_split.train[user]
        # Leave-one-out: the test history is training + the validation target, which is the second-to-last item.
        assert np.array_equal(data["test_histories"][i][:-1], full)
        assert data["test_histories"][i][-1] == demo_split.valid.targets[i][0]
        assert data["test_targets"][i] == demo_split.test.targets[i][0]


def test_a_changed_target_is_caught(demo_split, tmp_path):
    peers.export_split(demo_split, tmp_path, seeds=[0], max_valid_users=5000, name="demo")
    targets = np.load(tmp_path / "test_targets.npy")
    targets[7] = (targets[7] + 1) % demo_split.n_items
    np.save(tmp_path / "test_targets.npy", targets)
    with pytest.raises(AssertionError, match=str(demo_split.test.users[7])):
        peers.check_export(demo_split, tmp_path)


@pytest.mark.parametrize("seed", [0, 3])
def test_peers_validate_on_the_users_our_model_validates_on(demo_split, seed):
    cap = 1000  # below the demo's evaluated users, so a seeded sample is drawn
    model = SASRec()
    model.config.train.max_valid_users, model.config.train.seed = cap, seed
    ours = model._valid_subset(demo_split, cap)
    rows = peers.valid_rows(len(demo_split.valid), cap, seed)
    assert len(rows) == cap
    assert np.array_equal(demo_split.valid.users[rows], ours.users)


def test_peer_scores_are_ranked_with_history_excluded_and_pessimistic_ties(demo_split, tmp_path):
    peers.export_split(demo_split, tmp_path, seeds=[0], max_valid_users=5000, name="demo")
    data = read_split(tmp_path)
    n_users, n_items = len(data["test_targets"]), demo_split.n_items
    rows = np.arange(n_users)
    # The user's own history scores highest, the held-out item next: a library that forgot to drop seen
    # items would look like this, and only excluding the history ranks the target first.
    scores = np.zeros((n_users, n_items), np.float32)
    scores[rows, data["test_targets"]] = 1.0
    for i, history in enumerate(data["test_histories"]):
        scores[i, history[history != data["test_targets"][i]]] = 2.0
    assert peers.score_test(scores, data) == {"ndcg@10": 1.0, "hr@10": 1.0, "users": n_users}
    # Every item tied: pessimistic ranks put the target behind all unseen items, so no credit.
    flat = peers.score_test(np.ones((n_users, n_items), np.float32), data)
    assert flat["hr@10"] == 0.0


def test_a_variant_of_our_model_carries_its_settings_and_an_unknown_model_is_refused():
    """`--ours "bert4rec@max_len=50;mask_token_share=0.8"` trains our BERT4Rec with those settings (numbers stay
    numbers), so a sweep's winner is confirmed on the test split beside the default."""
    assert peers.ours_variant("bert4rec") == ("bert4rec", {})
    assert peers.ours_variant("bert4rec@max_len=50;mask_token_share=0.8;loss=gbce") == (
        "bert4rec", {"max_len": 50, "mask_token_share": 0.8, "loss": "gbce"})
    with pytest.raises(KeyError):
        peers.ours_variant("gru4rec@hidden=64")
