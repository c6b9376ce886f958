"""The peers' choices as settings the tuner searches (issue 23, item 2): `block="pre_norm"` (SASRec's own block
as RecTools builds it) and `block="ligr"` (eSASRec's gated one) train SASRec+ and BERT4Rec, and a history scores
the same alone or padded beside a longer one (the padding mask holds); `train_sequences="one_per_user"` trains one
window per user where crops make more; `batch_order` mixes lengths in a batch (shuffled, the default since issue
23's sweeps) or groups them (by_length); the defaults stay BERT's block and crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.data.splits import leave_one_out
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models.sequential import SequentialConfig
from recsys_core.training.experiment import make_model
from tests.test_jobs import _sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"hidden": 16, "max_len": 8, "epochs": 6, "patience": 100, "batch_size": 16, "valid_share": 0.0}


def _cycles(n_users: int = 60, n_items: int = 25, length: int = 14):
    return _sequences(n_users, n_items, length)  # users walking a cycle of items, one step a time unit


def test_the_defaults_stay_berts_block_and_crops_in_shuffled_batches():
    cfg = SequentialConfig()
    assert cfg.block == "bert" and cfg.train_sequences == "crops" and cfg.batch_order == "shuffled"


@pytest.mark.parametrize("block, layer", [("pre_norm", "PreNormLayer"), ("ligr", "LiGRLayer")])
@pytest.mark.parametrize("family", ["sasrec", "bert4rec"])
def test_the_peers_blocks_learn_a_cycle_and_ignore_padding(family, block, layer):
    ds = _cycles()
    split = leave_one_out(ds)
    model = make_model(family, {**SMALL, "block": block}).fit(ds, split=split)
    assert "PreNormStack" in repr(model.module_) and layer in repr(model.module_)  # the peers' stack, not BertModel
    # "next item = last + 1" is all there is to learn: far above the 10/25 a random ranking hits
    assert evaluate(model, split.test)["hr@10"] > 0.7
    short, long = split.test.histories[0][-3:], split.test.histories[1]
    alone = model.score([short])
    beside = model.score([short, long])[:1]  # padded to the longer history's width
    torch.testing.assert_close(alone, beside, rtol=1e-4, atol=1e-5)


def test_length_bucketed_batches_still_train_a_model_that_learns_a_cycle():
    """batch_order="by_length" (the old default: similar lengths together, least padding) stays a working choice."""
    ds = _cycles()
    split = leave_one_out(ds)
    model = make_model("sasrec", {**SMALL, "batch_order": "by_length", "train_sequences": "one_per_user"})
    assert evaluate(model.fit(ds, split=split), split.test)["hr@10"] > 0.7


def test_one_sequence_per_user_trains_one_window_per_user_where_crops_make_more():
    ds = _cycles(length=30)
    seqs = leave_one_out(ds).train
    crops = make_model("sasrec", SMALL).windows(seqs)
    one = make_model("sasrec", {**SMALL, "train_sequences": "one_per_user"}).windows(seqs)
    assert len(one) == len(seqs) < len(crops)
    ends = one.start + one.length
    assert np.array_equal(one.length, np.full(len(seqs), SMALL["max_len"]))  # each user's latest max_len items
    assert np.array_equal(ends, np.cumsum([len(s) for s in seqs]))
