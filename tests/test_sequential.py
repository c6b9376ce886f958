"""BERT4Rec and SASRec+ on tiny synthetic data: they learn a sequential rule, score any history
(empty, short, longer than max_len) with finite numbers, ignore padding, and save/seed/cancel/
resume the way a user expects."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.errors import DataError
from recsys_core.models import sequential
from recsys_core.models.base import load_model
from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys_core.models.sasrec import SASRec, SASRecConfig
from recsys_core.models.sequences import SequenceWindows, mixed_batch_widths
from recsys_core.models.sequential import MIN_VALID_USERS
from recsys_core.models.settings import build_config
from recsys_core.models.transformer import BLOCK_WEIGHTS, init_items_from_svd
from recsys_core.progress import Progress
from recsys_core.training.experiment import run_experiment

N_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only stall
FAMILIES = {"bert4rec": (BERT4Rec, BERT4RecConfig), "sasrec": (SASRec, SASRecConfig)}
# The encoder alone: the transition prior (test_transitions.py) would learn the successions these tests ask of it.
TINY = {"max_len": 12, "hidden": 32, "layers": 1, "heads": 2, "dropout": 0.1, "batch_size": 32, "device": "cpu", "eval_every": 5,
        "transitions": "off"}


def successor_dataset(n_users: int = 160, seed: int = 0):
    """Every user walks the catalogue in order from a random start: item i is always followed by i+1."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        start, length = rng.integers(0, N_ITEMS), rng.integers(4, 12)
        rows += [(f"u{user}", f"i{(start + t) % N_ITEMS:02d}", t) for t in range(length)]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="successor")
    return ds, leave_one_out(ds)


@pytest.fixture(scope="module")
def data():
    return successor_dataset()


def make(family: str, **overrides):
    cls, config_cls = FAMILIES[family]
    return cls(build_config(config_cls, {**TINY, **overrides}))


@pytest.fixture(scope="module")
def trained(data):
    """One short fit per family, shared by the tests that only need some trained model."""
    ds, split = data
    return {f: make(f, epochs=3).fit(ds, split=split) for f in FAMILIES}


@pytest.mark.parametrize("family,overrides", [
    ("sasrec", {"epochs": 25}),
    ("sasrec", {"epochs": 25, "loss": "sampled", "n_negatives": 8}),
    ("sasrec", {"epochs": 25, "positions": "from_end"}),  # RecTools' layout: the latest item always at one position
    ("bert4rec", {"epochs": 40, "lr": 5e-3, "dropout": 0.0, "mask_last_prob": 0.3}),
])
def test_learns_that_item_i_is_followed_by_i_plus_1(data, family, overrides):
    ds, split = data
    model = make(family, **overrides).fit(ds, split=split)
    top1 = model.score(split.test.histories).argmax(dim=1).numpy()
    targets = np.array([t[0] for t in split.test.targets])
    assert (top1 == targets).mean() > 0.6
    # A free-form history the model never saw is continued the same way.
    i = ds.item_index
    assert model.score([np.array([i["i03"], i["i04"], i["i05"]])]).argmax().item() == i["i06"]


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_finite_for_empty_short_and_overlong_histories(trained, family):
    model = trained[family]
    long = np.arange(5 * model.config.max_len) % N_ITEMS
    scores = model.score([np.array([], dtype=np.int64), np.array([7]), long])
    assert scores.shape == (3, N_ITEMS) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    assert model.score([]).shape == (0, N_ITEMS)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_never_changes_a_users_scores(trained, family):
    """Scored alone or beside longer histories (so padded), a history gets the same scores."""
    model = trained[family]
    short = [np.array([], dtype=np.int64), np.array([3]), np.array([4, 5])]
    alone = torch.cat([model.score([h]) for h in short])
    batched = model.score(short + [np.arange(40) % N_ITEMS, np.arange(9)])[:3]
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_short_histories_are_not_padded_to_a_long_ones_length(trained, family, monkeypatch):
    """Scoring cost follows the users' real lengths: one long history among many short ones is scored in
    a chunk of its own (a validation sample cost 3x its share when the whole batch was padded to it), and
    the scores come back in the caller's order, equal to scoring each user alone."""
    model = trained[family]
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, N_ITEMS, size=n) for n in [2] * 300 + [model.config.max_len] + [3] * 200]
    padded: list[int] = []
    real_context = model._context

    def counting(flat, starts, lengths):
        tokens, lens = real_context(flat, starts, lengths)
        padded.append(tokens.size)
        return tokens, lens

    monkeypatch.setattr(model, "_context", counting)
    monkeypatch.setattr(sequential, "SCORE_CHUNK_TOKENS", 512)
    scores = model.score(histories)
    real = sum(min(len(h), model.config.max_len - 1) + 1 for h in histories)
    assert sum(padded) <= 1.2 * real and max(padded) <= 512  # padded to a chunk's longest only
    monkeypatch.setattr(sequential, "SCORE_CHUNK_TOKENS", 10**6)
    picked = [0, 299, 300, 301, 500]
    torch.testing.assert_close(scores[picked], model.score([histories[i] for i in picked]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_last_max_len_items_matter(trained, family):
    model = trained[family]
    keep = model.config.max_len - 1  # one slot is the [MASK]/[BOS] token
    recent = np.arange(keep) % N_ITEMS
    older = np.concatenate([np.full(50, 17), recent])
    torch.testing.assert_close(model.score([older]), model.score([recent]))


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_user_embeddings_dot_item_embeddings(trained, family):
    model = trained[family]
    histories = [np.array([1, 2, 3]), np.array([], dtype=np.int64)]
    users, items = model.user_embeddings(histories), model.item_embeddings()
    assert items.shape == (N_ITEMS, model.config.hidden) and users.shape == (2, model.config.hidden)
    np.testing.assert_allclose(users @ items.T, model.score(histories).numpy(), atol=1e-4)


def test_unknown_item_index_is_a_clear_error(trained):
    with pytest.raises(DataError, match="outside the catalogue"):
        trained["sasrec"].score([np.array([1, N_ITEMS + 5])])


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_identical_scores(trained, family, tmp_path):
    model = trained[family]
    model.save(tmp_path / family)
    loaded = load_model(tmp_path / family)
    assert type(loaded) is type(model) and loaded.config == model.config
    histories = [np.array([], dtype=np.int64), np.array([5, 6, 7]), np.arange(30)]
    torch.testing.assert_close(loaded.score(histories), model.score(histories), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_trained_on_a_sampled_loss_saves_loads_and_scores_alike(data, family, tmp_path):
    ds, split = data
    model = make(family, epochs=2, loss="gbce", n_negatives=8).fit(ds, split=split)
    assert model.fit_report()["loss"] == "gbce"
    loaded = load_model(model.save(tmp_path / family))
    assert loaded.config.loss == "gbce" and loaded.config == model.config
    torch.testing.assert_close(loaded.score(split.test.histories), model.score(split.test.histories), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_model_other_seed_other_model(data, family):
    ds, split = data
    runs = [make(family, epochs=2, seed=s).fit(ds, split=split) for s in (7, 7, 8)]
    scores = [m.score(split.test.histories[:20]) for m in runs]
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    assert not torch.allclose(scores[0], scores[2])


def test_two_runs_at_once_in_one_process_give_the_solo_models(data):
    """Two sessions training in the same server process (threads) with dropout, which draws from torch's
    process-wide generator: each gets exactly the model it gets alone."""
    ds, split = data
    solo = {s: make("sasrec", epochs=2, seed=s).fit(ds, split=split).score(split.test.histories[:20]) for s in (7, 8)}
    with ThreadPoolExecutor(2) as pool:
        both = dict(zip((7, 8), pool.map(lambda s: make("sasrec", epochs=2, seed=s).fit(ds, split=split), (7, 8))))
    for s in (7, 8):
        torch.testing.assert_close(both[s].score(split.test.histories[:20]), solo[s], rtol=0, atol=0)


def test_cancel_stops_within_a_few_steps_and_leaves_a_usable_model(data):
    ds, split = data
    seen = []

    def on_event(event):
        if event.total and event.step:
            seen.append(event.step)
        if event.step >= 10:
            progress.cancel()

    progress = Progress(on_event)
    model = make("sasrec", epochs=500, eval_every=1, patience=0).fit(ds, split=split, progress=progress)
    assert model.fit_report_["stopped"] == "cancelled"
    assert max(seen) <= 15  # 500 epochs would be ~4000 steps
    # The best weights validated before the cancel are kept and score like a trained model.
    assert model.fit_report_["best_epoch"] >= 1
    assert torch.isfinite(model.score(split.test.histories)).all()


def test_checkpoint_resume_continues_to_the_same_model(data, tmp_path):
    ds, split = data
    straight = make("bert4rec", epochs=4, eval_every=1).fit(ds, split=split)

    def cancel_in_epoch_2(event):
        if event.epoch >= 2 and event.total:
            progress.cancel()

    progress = Progress(cancel_in_epoch_2)
    ckpt = str(tmp_path / "ckpt")
    first = make("bert4rec", epochs=4, eval_every=1, checkpoint_dir=ckpt).fit(ds, split=split, progress=progress)
    done = first.fit_report_["epochs_run"]
    assert first.fit_report_["stopped"] == "cancelled" and 1 <= done < 4
    events = []
    resumed = make("bert4rec", epochs=4, eval_every=1, checkpoint_dir=ckpt).fit(
        ds, split=split, progress=Progress(events.append))
    assert any(f"resumed from checkpoint at epoch {done}" in e.message for e in events)
    assert resumed.fit_report_["epochs_run"] == 4
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4]
    torch.testing.assert_close(resumed.score(split.test.histories), straight.score(split.test.histories))


def test_windows_cover_long_histories_with_recent_crops_first():
    seqs = [np.arange(25), np.arange(3), np.array([], dtype=np.int64)]
    w = SequenceWindows(seqs, max_len=10, stride=5)
    assert (w.length <= 10).all() and len(w) == 5  # 25 items -> ends 25, 20, 15, 10; plus the 3-item history
    tokens, lengths = w.padded(np.arange(len(w)))
    ends = [int(tokens[r, lengths[r] - 1]) - 1 for r in range(len(w))]
    assert ends[:4] == [24, 19, 14, 9] and ends[4] == 2
    assert (tokens[lengths < tokens.shape[1], -1] == 0).all()  # right padding


def test_shuffled_batches_mix_lengths_and_by_length_batches_do_not():
    """batch_order: by_length groups similar lengths (least padding); shuffled mixes them as RecTools' loader does,
    and both use every window exactly once per epoch."""
    seqs = [np.arange(n) for n in np.tile([2, 3, 40, 50], 64)]
    w = SequenceWindows(seqs, max_len=50, stride=25, crops=False)
    for by_length in (True, False):
        batches = w.batches(32, np.random.default_rng(0), by_length=by_length)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(w)))
        spans = [np.ptp(w.length[b]) for b in batches]
        assert max(spans) <= 10 if by_length else min(spans) >= 40


def test_validation_planning_counts_the_padding_that_shuffled_batches_really_pay():
    """Few long histories among many short ones: a shuffled batch pads to its longest window, which is often but not
    always a long one. The planned encoder cost matches the real padded batches of an epoch within 5 %, where
    padding every row to the longest window overall would overstate it (and give validation more than its share)."""
    lengths = np.r_[np.full(970, 3), np.full(30, 50)]
    seqs = [np.arange(n) for n in lengths]
    model = make("sasrec", batch_size=32, max_len=50)
    windows = SequenceWindows(seqs, max_len=50, stride=25, crops=False)
    rng = np.random.default_rng(0)
    real = np.mean([sum(model._encoder_cost(np.full(len(b), float(windows.length[b].max())))
                        for b in windows.batches(32, rng)) for _ in range(20)])
    planned = model._encoder_cost(*mixed_batch_widths(windows.length, 32))
    assert planned == pytest.approx(real, rel=0.05)
    assert model._encoder_cost(np.full(len(windows), 50.0)) > 1.3 * real


@pytest.mark.parametrize("block", ["bert", "pre_norm", "ligr"])
def test_validation_planning_prices_each_block_at_its_real_width(data, block):
    """The planner's multiply-adds per token and layer are the block's real matrix sizes, so a wider block (LiGR's
    SwiGLU) gets no more than its share of validation, measured from the weights of one built layer."""
    ds, _ = data
    model = make("sasrec", block=block, hidden=16, heads=2, layers=1)
    model._remember_catalogue(ds)
    encoder = model._build().bert
    matrices = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    matrices += sum(m.in_proj_weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.MultiheadAttention))
    assert matrices == BLOCK_WEIGHTS[block] * 16 ** 2


def test_svd_item_init_puts_co_consumed_items_close(data):
    """Items that share users start with similar vectors (what lets training skip the popularity plateau)."""
    ds, split = data
    model = make("sasrec", epochs=1)
    model._remember_catalogue(ds)
    module = model._build()
    init_items_from_svd(module.item_emb, split.train, N_ITEMS, seed=0)
    emb = torch.nn.functional.normalize(module.item_weights().detach(), dim=1)
    sim = emb @ emb.T
    i = ds.item_index
    neighbours = torch.stack([sim[i[f"i{k:02d}"], i[f"i{(k + 1) % N_ITEMS:02d}"]] for k in range(N_ITEMS)])
    far = torch.stack([sim[i[f"i{k:02d}"], i[f"i{(k + 15) % N_ITEMS:02d}"]] for k in range(N_ITEMS)])
    assert neighbours.mean() > far.mean() + 0.3


def test_a_run_whose_validation_never_improves_is_flagged_not_finished(data) -> None:
    ds, _ = data
    frozen = {**TINY, "lr": 1e-30, "epochs": 3, "eval_every": 1, "patience": 0}  # below float32 resolution: weights never move
    result = run_experiment(ds, "sasrec", frozen)
    assert result.status == "no_improvement" and result.extra["stop_reason"] == "all epochs run"
    learning = run_experiment(ds, "sasrec", {**TINY, "epochs": 3, "eval_every": 1})
    assert learning.status == "finished" and learning.cpu_s > 0 and learning.extra["holdout"] == "last"
    assert learning.extra["loss"].startswith(f"ce: {ds.n_items:,} items <= auto_sampled_items=")  # the record says why


def test_validation_is_planned_to_take_at_most_its_share_of_training_compute():
    """Many validation users and little training between validations: a seeded sample of them, no fewer
    than MIN_VALID_USERS, then validation every few epochs; the plan is recorded with the run."""
    ds, split = successor_dataset(n_users=3000)
    model = make("sasrec", eval_every=0, epochs=12)
    model._remember_catalogue(ds)
    windows = model.windows(split.train)
    plan = model.validation_plan(split, windows, steps_per_epoch=100)
    assert plan.of == 3000 and MIN_VALID_USERS <= plan.users < 3000
    assert plan.share <= 0.1 + 1e-9
    off = make("sasrec", eval_every=0, valid_share=0.0)
    off._remember_catalogue(ds)
    assert off.validation_plan(split, windows, steps_per_epoch=100).users == 3000  # 0 = every user, as before
    loose = make("sasrec", eval_every=0, valid_share=0.9)
    loose._remember_catalogue(ds)
    assert loose.validation_plan(split, windows, steps_per_epoch=100).users == 3000


def test_a_small_validation_set_is_validated_less_often_unless_the_cadence_was_chosen(data):
    ds, split = data
    auto = make("sasrec", eval_every=0, epochs=6, patience=0).fit(ds, split=split)
    plan = auto.fit_report_["validation"]
    assert plan["users"] == len(split.valid) and plan["every"] > 1 and plan["share"] <= 0.1
    validated = [h["epoch"] for h in auto.history_ if "metrics" in h]
    assert validated == sorted({*range(plan["every"], 7, plan["every"]), 6})  # and always after the last epoch
    assert all(h["validation_cpu_seconds"] > 0 for h in auto.history_ if "metrics" in h)
    chosen = make("sasrec", eval_every=1, epochs=3, patience=0).fit(ds, split=split)
    assert chosen.fit_report_["validation"]["every"] == 1
    assert [h["epoch"] for h in chosen.history_ if "metrics" in h] == [1, 2, 3]


def test_bert_style_masking_shows_mask_random_or_the_item_itself_at_the_chosen_shares(trained):
    model = trained["bert4rec"]
    tokens = torch.from_numpy(np.random.default_rng(0).integers(1, N_ITEMS + 1, (400, 12)))
    lengths = torch.full((400,), 12)
    special = model.module_.special_token
    assert BERT4RecConfig().mask_token_share == 0.8  # BERT's 80/10/10 by default
    model.config.mask_token_share = 1.0
    try:
        inputs, masked = model._cloze_inputs(tokens, lengths, np.random.default_rng(1))
        assert (inputs[masked] == special).all() and (inputs[~masked] == tokens[~masked]).all()  # 1.0: all [MASK]
        model.config.mask_token_share = 0.8
        inputs, masked = model._cloze_inputs(tokens, lengths, np.random.default_rng(1))
    finally:
        model.config.mask_token_share = BERT4RecConfig().mask_token_share
    shown = inputs[masked]
    as_mask = float((shown == special).float().mean())
    as_itself = float((shown == tokens[masked]).float().mean())
    assert 0.77 < as_mask < 0.83 and 0.07 < as_itself < 0.14  # a random item may also equal the target
    assert ((shown >= 1) & (shown <= N_ITEMS) | (shown == special)).all()
    assert (inputs[~masked] == tokens[~masked]).all()  # unmasked positions untouched


def test_sasrec_positions_from_end_put_every_latest_item_at_one_position_and_survive_a_save(data, tmp_path):
    ds, split = data
    lengths = torch.tensor([3, 7])
    from_end = make("sasrec", positions="from_end")
    positions = from_end._positions(lengths, 7)
    assert positions[0, 2].item() == positions[1, 6].item() == 0  # the latest item of either history
    assert make("sasrec")._positions(lengths, 7)[1, 6].item() == 6  # the default counts from the start
    model = make("sasrec", positions="from_end", epochs=2).fit(ds, split=split)
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.config.positions == "from_end"
    histories = split.test.histories[:20]
    assert torch.equal(loaded.score(histories), model.score(histories))
