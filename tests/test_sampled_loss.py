"""Sampled losses of the sequential models (`recsys_core/models/losses.py`): the logQ-corrected sampled
softmax estimates the full one, gBCE is the paper's formula, accidental hits never count as negatives,
both models learn the demo with either loss, and loss="auto" picks by catalogue size and says why."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_core.data.demo import load_demo
from recsys_core.data.splits import leave_one_out
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models import losses
from recsys_core.models.base import load_model
from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys_core.models.popularity import Popularity
from recsys_core.models.sasrec import SASRec, SASRecConfig
from recsys_core.models.settings import build_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAMILIES = {"bert4rec": (BERT4Rec, BERT4RecConfig), "sasrec": (SASRec, SASRecConfig)}
V0 = Path(__file__).parent / "fixtures" / "artifacts-v0"
# Small enough for CI, big enough to leave popularity behind on the demo in six epochs.
DEMO = {"max_len": 30, "hidden": 32, "layers": 1, "heads": 2, "batch_size": 64, "device": "cpu", "epochs": 6,
        "n_negatives": 256, "max_valid_users": 500, "patience": 0}


def make(family: str, **overrides):
    cls, config_cls = FAMILIES[family]
    return cls(build_config(config_cls, overrides))


# ---- the math ------------------------------------------------------------------------------------


def scores_and_labels(rows: int = 6, n_items: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, n_items, generator=gen) * 2
    return logits, torch.randint(0, n_items, (rows,), generator=gen)


def sampled_from_logits(logits, labels, negatives, log_expected):
    pos = logits[torch.arange(len(labels)), labels]
    return losses.sampled_softmax(pos, logits[:, negatives], labels, negatives, log_expected)


def test_sampled_softmax_over_the_whole_catalogue_is_the_full_softmax():
    logits, labels = scores_and_labels()
    every = torch.arange(logits.shape[1])  # each item drawn once: expected count 1, log 1 = 0
    loss = sampled_from_logits(logits, labels, every, torch.zeros(len(every)))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_logq_correction_makes_popularity_drawn_negatives_estimate_the_full_softmax():
    """With a skewed proposal, many draws and log(k q) subtracted, the sampled loss converges on the full
    cross-entropy; without the correction it stays far off (popular negatives over-counted)."""
    logits, labels = scores_and_labels()
    logits[:, :5] += 3.0  # the popular items also score high, as they do in a trained model
    counts = 1.0 / np.arange(1, logits.shape[1] + 1) ** 1.2
    sampler = losses.NegativeSampler(counts, alpha=1.0, uniform_share=0.05)
    k = 200_000
    drawn = sampler.draw(k, np.random.default_rng(0))
    negatives = torch.from_numpy(drawn)
    corrected = sampled_from_logits(logits, labels, negatives, torch.from_numpy(sampler.log_expected_count(drawn, k)))
    uncorrected = sampled_from_logits(logits, labels, negatives, torch.full((k,), math.log(k / logits.shape[1])))
    full = F.cross_entropy(logits, labels)
    assert abs(corrected.item() - full.item()) < 0.01 * full.item()
    assert abs(uncorrected.item() - full.item()) > 0.1 * full.item()


def test_the_proposal_follows_count_to_the_alpha_mixed_with_uniform():
    sampler = losses.NegativeSampler(np.array([0, 1, 4, 16]), alpha=0.5, uniform_share=0.2)
    expected = 0.8 * np.array([0, 1, 2, 4]) / 7 + 0.2 / 4
    np.testing.assert_allclose(sampler.q, expected)
    drawn = sampler.draw(100_000, np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / len(drawn), expected, atol=0.01)
    assert (drawn == 0).any()  # the uniform share reaches items nobody interacted with


def test_gbce_matches_the_papers_formula_computed_by_hand():
    """alpha = 3/10, t = 0.75: beta = 0.3 * (0.75 * (1 - 1/0.3) + 1/0.3) = 0.475. The loss is gSASRec's: BCE of the
    transformed positive logit -log(sigmoid(s)^-beta - 1) and of the negatives, averaged over the candidates, all
    after the constant shift log(beta / k) that starts every logit at the loss's equilibrium rate."""
    beta = losses.gbce_beta(3, 11, 0.75)
    assert beta == pytest.approx(0.475)
    shift = math.log(0.475 / 3)
    s_pos, s_negs = 1.0 + shift, [0.5 + shift, -1.0 + shift, 2.0 + shift]

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    transformed = -math.log(sigmoid(s_pos) ** -0.475 - 1)
    by_hand = (-math.log(sigmoid(transformed)) + sum(-math.log(1 - sigmoid(s)) for s in s_negs)) / 4
    loss = losses.gbce(torch.tensor([1.0]), torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([7]),
                       torch.tensor([0, 1, 2]), beta)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_gbce_beta_ends():
    assert losses.gbce_beta(9, 10, 0.75) == pytest.approx(1.0)  # every other item sampled: plain BCE
    assert losses.gbce_beta(10, 1001, 1.0) == pytest.approx(0.01)  # t = 1: beta = alpha
    assert losses.gbce_beta(10, 1001, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE


HIT = {"pos": torch.tensor([0.3]), "neg": torch.tensor([[0.1, 2.5, -0.4]]), "labels": torch.tensor([4]),
       "negatives": torch.tensor([1, 4, 6])}  # item 4 was drawn and is the row's positive


def test_an_accidental_hit_is_not_a_negative_in_the_sampled_softmax():
    log_expected = torch.tensor([0.2, -0.5, 0.1])
    with_hit = losses.sampled_softmax(**HIT, log_expected=log_expected)
    keep = [0, 2]
    without = losses.sampled_softmax(HIT["pos"], HIT["neg"][:, keep], HIT["labels"], HIT["negatives"][keep],
                                     log_expected[keep])
    torch.testing.assert_close(with_hit, without)
    other_label = losses.sampled_softmax(**{**HIT, "labels": torch.tensor([5])}, log_expected=log_expected)
    assert other_label > with_hit + 0.5  # for a row whose positive is another item, the draw does count


def test_an_accidental_hit_is_not_a_negative_in_gbce():
    beta = 0.4
    shift = math.log(beta / 3)  # the shift counts the draws, hits included
    by_hand = (-beta * F.logsigmoid(HIT["pos"][0] + shift) + F.softplus(HIT["neg"][0, [0, 2]] + shift).sum()) / 3
    torch.testing.assert_close(losses.gbce(**HIT, beta=beta), by_hand)
    assert losses.gbce(**{**HIT, "labels": torch.tensor([5])}, beta=beta) > losses.gbce(**HIT, beta=beta)


# ---- the models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    ds = load_demo()
    split = leave_one_out(ds)
    popularity = evaluate(Popularity().fit(ds, split=split), split.test, ks=(10,))["ndcg@10"]
    return ds, split, popularity


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loss", ["sampled", "gbce"])
def test_both_models_learn_the_demo_with_a_sampled_loss(demo, family, loss):
    ds, split, popularity = demo
    model = make(family, **DEMO, loss=loss).fit(ds, split=split)
    assert model.fit_report()["loss"] == loss
    ndcg = evaluate(model, split.test, ks=(10,))["ndcg@10"]
    assert ndcg > 1.1 * popularity, (ndcg, popularity)


def test_auto_keeps_the_full_softmax_on_the_demo(demo):
    ds, _, _ = demo
    for family in FAMILIES:
        choice = make(family).loss_choice(ds.n_items)
        assert choice.loss == "ce" and f"{ds.n_items:,} items <=" in choice.reason


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_switches_to_sampled_above_the_threshold_and_the_report_says_why(demo, family):
    ds, split, _ = demo
    small = {**DEMO, "epochs": 1, "max_steps": 3}
    model = make(family, **small, auto_sampled_items=1000).fit(ds, split=split)
    report = model.fit_report()
    assert report["loss"] == "sampled"
    assert report["loss_reason"].startswith(f"sampled: {ds.n_items:,} items > auto_sampled_items=1,000")
    assert "full softmax is ~" in report["loss_reason"]
    stays = make(family, **small).fit(ds, split=split).fit_report()
    assert stays["loss"] == "ce" and stays["loss_reason"].startswith("ce:")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_memory_plan_counts_only_the_sampled_logits(family):
    auto, full = make(family, batch_size=128), make(family, loss="ce", batch_size=128)
    assert auto.training_memory(2_000) == full.training_memory(2_000)  # auto is ce on a small catalogue
    big = 100_000
    assert auto.loss_choice(big).loss == "sampled"
    assert auto.training_memory(big) < full.training_memory(big) / 5
    assert auto.training_memory(big) < 2 * 2**30  # batch 128 at 100k items under 2 GB (estimate)
    assert make(family, loss="gbce", batch_size=128).training_memory(big) == auto.training_memory(big)


@pytest.mark.parametrize("loss", ["sampled", "gbce"])
def test_same_seed_same_model_with_sampled_negatives(demo, loss):
    ds, split, _ = demo
    small = {**DEMO, "epochs": 1, "max_steps": 5, "loss": loss}
    runs = [make("sasrec", **small, seed=s).fit(ds, split=split) for s in (3, 3, 4)]
    scores = [m.score(split.test.histories[:50]) for m in runs]
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    assert not torch.allclose(scores[0], scores[2])


def test_negatives_come_from_the_runs_generator_not_the_global_one():
    sampler = losses.NegativeSampler.uniform(1000)
    np.random.seed(0)
    first = sampler.draw(20, np.random.default_rng(5))
    np.random.seed(1)
    assert (sampler.draw(20, np.random.default_rng(5)) == first).all()


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_a_saved_sasrec_with_an_old_loss_setting_loads_and_scores_as_before(loss, tmp_path):
    """SASRec+ folders saved while loss was "ce" or "sampled" (uniform negatives) keep their meaning: the
    setting loads as it was and the weights score exactly as the fixture's reference."""
    folder = tmp_path / "sasrec"
    shutil.copytree(V0 / "sasrec", folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["loss"] = loss
    (folder / "config.json").write_text(json.dumps(meta))
    model = load_model(folder)
    assert model.config.loss == loss and model.config.n_negatives == 1024
    reference = json.loads((V0 / "reference_scores.json").read_text())
    index = {item_id: i for i, item_id in enumerate(model.item_ids_)}
    histories = [np.array([index[i] for i in h]) for h in reference["histories"]]
    np.testing.assert_allclose(model.score(histories).numpy(), reference["scores"]["sasrec"], atol=1e-5)
    assert model.loss_choice(model.n_items_).loss == loss


def test_an_unknown_loss_is_named_when_the_config_is_built():
    from recsys_core.errors import ConfigError

    with pytest.raises(ConfigError, match="setting 'loss': 'bpr' is not allowed \\(it must be one of 'auto', 'ce'"):
        make("bert4rec", loss="bpr")
