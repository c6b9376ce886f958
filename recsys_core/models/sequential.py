"""The face of the sequential transformers (BERT4Rec, SASRec+): their shared settings, fitting through the
shared loop with a validation plan, chunked full-catalogue scoring and persistence. Their data (training
windows, padded batches) lives in `sequences.py`, their network (item embeddings -> BertModel -> tied output)
in `transformer.py`.

The families differ only in attention mask (bidirectional vs causal), where the readout token sits
and which positions they train on; the objective over those positions (full softmax, sampled softmax,
gBCE, or auto) is shared and its math lives in `losses.py`.

Token ids: 0 = padding, 1..n_items = item index + 1, n_items + 1 = [MASK] (BERT4Rec) / [BOS] (SASRec).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.evaluation.metrics import evaluate, sample_users
from recsys_core.models import ensemble, loop, losses, refit
from recsys_core.models.base import Capabilities, Recommender
from recsys_core.models.sequences import (
    SCORE_CHUNK_TOKENS,
    SequenceWindows,
    histories_to_tokens,
    mixed_batch_widths,
    padded_widths,
)
from recsys_core.models.settings import Settings, TrainConfig, search, search_choices, setting, train_defaults
from recsys_core.models.transformer import BLOCK_WEIGHTS, SequenceEncoder, init_items_from_svd
from recsys_core.models.transitions import TRANSITION_MODES, TransitionPrior, fit_prior
from recsys_core.progress import Progress

# loss="auto" switches to the sampled softmax above this many items, where the full softmax is already ~3/4 of
# a SASRec+ step on a CPU. `bench/scale.py --loss-sweep` (1 thread, batch 128, max_len 100, hidden 64, full-length
# sequences; bench/results/loss-sweep-20261202.json), CPU s/step sampled vs ce: 4,988 items 0.77 vs 1.39 (1.8x),
# 16,700 items 0.77 vs 4.75 (6.2x), 28,539 items 0.66 vs 5.7 (ce at batch 32 x 4; 8.7x). Sampled stays flat.
# The demo (2.4k items), ML-100k and ML-1M stay on the full softmax.
AUTO_SAMPLED_ITEMS = 10_000
VALIDATION_BATCH_USERS = 512  # Cancel is read between batches: ~0.5 CPU s each on the demo
# Below this many validation users the sample's noise starts to blur early stopping (NDCG@10's standard
# error ~0.3/sqrt(n)); a validation that would need fewer to stay within `valid_share` runs less often.
MIN_VALID_USERS = 1000


@dataclass
class SequentialConfig(Settings):
    """Hyperparameters shared by the sequential transformers.

    Defaults were tuned on ML-100k leave-one-out on a 2-core CPU (bench/seq_tune.py): small
    batches matter most, because these models sit on a popularity plateau for a few hundred
    optimizer steps before attention starts to pay off; batch 32 at lr 2e-3 leaves it soonest
    (batch 128 at 1e-3 took 3x longer, batch 16 or lr 4e-3 stalled).
    """

    # 50, not 100: test NDCG@10 (3 seeds, CPU demo profile, bench/peers.py variants) SASRec+ +0.003 on the demo,
    # +0.008 on ML-100k, +0.019 on the first 100k ML-1M ratings; the validation sweep agreed (bench/sweep.py).
    # Long-history data (full ML-1M, where papers read 200) may want more: it is a setting.
    max_len: int = setting(50, "Most recent items of a history the model reads.", ge=2, le=65_536)
    hidden: int = setting(64, "Width of item embeddings and transformer layers.", ge=1, le=16_384)
    layers: int = setting(2, "Transformer layers.", ge=1, le=128)
    heads: int = setting(2, "Attention heads per layer (hidden must be a multiple of it).", ge=1, le=1_024)
    dropout: float = setting(0.1, "Dropout on embeddings and hidden layers.", ge=0, lt=1)
    attn_dropout: float = setting(0.0, "Dropout on attention weights; above 0 it forces a ~3x slower attention on CPU.",
                                 ge=0, lt=1)
    init_std: float = setting(0.0, "Std of the initial weights (0 = 1/sqrt(hidden)).", ge=0)
    item_init: str = setting("svd", "Start item embeddings from a truncated SVD of the interactions (svd) or random.",
                             choices=("svd", "random"))
    head_transform: bool = setting(True, "Dense + GELU + LayerNorm before the output layer tied to item embeddings.")
    output_bias: bool = setting(False, "A learned per-item bias (without it, scores are user . item embeddings).")
    window_stride: int = setting(0, "Long histories also train as earlier crops every this many items "
                                    "(0 = max_len / 2).", ge=0)
    # The peers' choices, as settings the tuner can pick per dataset (issue 23): RecTools' and SASRec's own block
    # (pre-norm) and one training sequence per user (RecTools, gSASRec) instead of crops of long histories.
    # pre_norm: LayerNorm before attention and the ReLU feed-forward, padding zeroed after every layer, a final
    # LayerNorm (transformer.py).
    # ligr: eSASRec's gated pre-norm block with a SwiGLU feed-forward (transformer.py).
    block: str = setting("bert", "Transformer block: bert (post-norm BERT layers), pre_norm (SASRec's own, as "
                                 "RecTools builds it) or ligr (eSASRec's gated one).",
                         choices=("bert", "pre_norm", "ligr"))
    train_sequences: str = setting("crops", "Training sequences: crops (the last max_len items, plus earlier crops "
                                            "every window_stride) or one_per_user (the last max_len only).",
                                   choices=("crops", "one_per_user"))
    # shuffled, not by_length: batches of similar lengths pad least (cheaper steps) but give each step's gradient one
    # kind of history. Validation NDCG@10, 3 seeds, CPU demo profile (bench/results/sweep-layouts-*.json): SASRec+
    # +0.0056 demo, +0.0033 ML-100k (every seed ahead), +0.0004 ML-1M first 100k (a tie, at ~25 % more CPU);
    # BERT4Rec +0.0082 demo, +0.0040 ML-100k. It was most of the gap to RecTools at equal settings (issue 23).
    batch_order: str = setting("shuffled", "Training batches: shuffled (mixed history lengths, as RecTools) or "
                                           "by_length (similar lengths: cheaper steps, lower accuracy in our sweeps).",
                               choices=("shuffled", "by_length"))
    # Off by default: with the split shifted one item back it scored within the seeds' noise on the demo and ML-100k
    # (bench/results/sweep-refit-*.json), at 1.5-2x the CPU. For data whose last items matter most (short histories).
    refit: bool = setting(False, "After early stopping, train again from the start on the training and validation "
                                 "items for the best run's steps (1.5-2x the CPU in our runs).")
    # A seed ensemble (ensemble.py). Test NDCG@10 with 3 members, 3 seeds, CPU demo profile (bench/results/peers-*-
    # members3-*.json): demo BERT4Rec block=ligr 0.1368 -> 0.1413, ML-100k BERT4Rec 0.1126 -> 0.1194, ML-1M first 100k
    # SASRec+ 0.1338 -> 0.1464; validation agreed on all three. Not a default: 3x the CPU (a profile's budget is shared).
    members: int = setting(1, "Train this many copies from different seeds and average their scores; the CPU budget "
                              "is shared equally (about members x the CPU).", ge=1, le=16)
    # The successions an encoder misses (transitions.py): test NDCG@10 +0.0026..+0.0097 for single models on every seed of
    # the demo, ML-100k and the ML-1M subset (peers-*-transitions-*); validation chose a weight above 0 on all of them.
    transitions: str = setting("auto", "auto: also score how often each item followed the history's last item in "
                                       "training, weighted on validation; off: the encoder alone.", choices=TRANSITION_MODES)
    score_batch_size: int = setting(512, "Users scored per batch at inference.", ge=1)
    loss: str = setting("auto", "auto (ce up to auto_sampled_items items), ce (full softmax), sampled (over "
                                "n_negatives popular items, logQ-corrected) or gbce (gSASRec).", choices=losses.LOSSES)
    n_negatives: int = setting(1024, "Negative items drawn per batch, shared by its rows (sampled and gbce losses).",
                               ge=1, le=1_000_000)
    neg_alpha: float = setting(0.75, "Sampled loss: negatives drawn in proportion to count^neg_alpha (0 = uniform).", ge=0)
    neg_uniform_share: float = setting(0.1, "Sampled loss: share of the draws spread uniformly over the catalogue, "
                                            "so every item can be a negative.", ge=0, le=1)
    gbce_t: float = setting(0.75, "gBCE calibration t: 0 = plain binary cross-entropy, 1 = as calibrated as the "
                                  "full softmax.", ge=0, le=1)
    auto_sampled_items: int = setting(AUTO_SAMPLED_ITEMS, "loss=auto trains with the full softmax up to this "
                                                          "many items and with the sampled one above.", ge=0)
    # 0.08 aims below the 10 % goal: the multiply-add estimate reads SASRec+'s validation ~15 % cheap
    # (bench/results/validation-demo-movietweetings-20261202.json: planned 10 %, measured 11.3-11.8 %).
    valid_share: float = setting(0.08, "Most of the training compute validation may take: fewer users (down to "
                                       "1,000), then less often. 0 = off.", ge=0, lt=1)
    train: TrainConfig = train_defaults(epochs=200, batch_size=32, lr=2e-3, patience=10, eval_every=0)
    # The tuner's space (`recsys tune`, the Train page's "Find the best settings"): the shape, regularisation and
    # optimiser settings the earlier sweeps moved; heads 1 or 2 divide every hidden width offered.
    search_space: ClassVar[dict] = {
        "hidden": search_choices(32, 64, 128), "layers": search(1, 3), "heads": search_choices(1, 2),
        "dropout": search(0.0, 0.5), "max_len": search_choices(25, 50, 100, 200),
        "train.lr": search(3e-4, 5e-3, log=True), "train.batch_size": search_choices(32, 64, 128),
        "train.weight_decay": search(0.0, 0.1), "block": search_choices("bert", "pre_norm", "ligr"),
        "train_sequences": search_choices("crops", "one_per_user"),
        "batch_order": search_choices("shuffled", "by_length")}

    def check(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"hidden={self.hidden} is not a multiple of heads={self.heads}", setting="hidden",
                              hint="pick hidden divisible by heads, e.g. hidden=64, heads=2")


@dataclass(frozen=True)
class ValidationPlan:
    """Which validation users, and every how many epochs, a fit scores; `share` is validation's estimated
    share of the compute (multiply-adds from the model's shape, see `SequentialRecommender.validation_plan`)."""

    users: int
    of: int
    every: int
    share: float


# ---- the recommender ---------------------------------------------------------------------------


class SequentialRecommender(Recommender):
    """Base of BERT4Rec and SASRec+: subclasses set `causal` and implement `_batch_loss` and
    `_context` (how a history becomes the tokens and readout position scored from)."""

    causal: ClassVar[bool]
    positions_from_end: ClassVar[bool]

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.module_: SequenceEncoder | None = None  # the member being trained; after fit, the first
        self.members_: list[SequenceEncoder] = []  # the encoders that score (all members after fit)
        self.history_: list[dict] = []
        self.fit_report_: dict = {}
        self.loss_: losses.LossChoice | None = None  # the objective of the last fit
        self.joined_: tuple[list[SequenceEncoder], torch.Tensor, torch.Tensor | None] | None = None
        self.sampler_: losses.NegativeSampler | None = None  # training only: the negatives' proposal
        self.transitions_: TransitionPrior | None = None  # transitions="auto" with a weight above 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(order_aware=True, training_curves=True, seed_ensemble=True,
                            transition_prior=self.config.transitions == "auto")

    def training_history(self) -> list[dict]:
        return self.history_

    def fit_report(self) -> dict:
        return self.fit_report_

    def training_device(self) -> str:
        return self.device.type if self.module_ is not None else "cpu"

    def training_memory(self, n_items: int) -> int:
        cfg = self.config
        return loop.estimate_memory(n_items, cfg.max_len, cfg.hidden, cfg.train.batch_size, cfg.layers, cfg.heads,
                                    output_positions=self._output_positions(n_items))

    # -- family hooks

    def _context(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token matrix and lengths the model reads for scoring; the readout is the last real token."""
        raise NotImplementedError

    def _batch_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator,
                    rows: slice = slice(None)) -> torch.Tensor:
        """The loss of rows `rows` of a padded batch as their part of the whole batch's mean loss (the
        sum of their terms over the batch's number of terms): all rows give the mean. Random draws are
        made for the whole batch before the rows are taken, so under torchrun each process computes its
        rows exactly as one process would."""
        raise NotImplementedError

    def _target_positions(self) -> float:
        """Positions per sequence that the objective predicts an item at, on average."""
        return float(self.config.max_len)

    # -- the objective

    def _output_positions(self, n_items: int) -> float:
        """Positions per sequence that cost full-catalogue logits in training (for memory planning): a
        sampled objective computes (n_negatives + 1) of the n_items logits at each target position."""
        targets = self._target_positions()
        if self.loss_choice(n_items).loss == "ce":
            return targets
        return targets * losses.sampled_share(self.config.n_negatives, n_items)

    def loss_choice(self, n_items: int) -> losses.LossChoice:
        """The objective a fit on `n_items` items uses, and why (`loss="auto"` decides on the catalogue size)."""
        cfg = self.config
        share = losses.softmax_share(n_items, self._target_positions(), cfg.max_len, cfg.hidden, cfg.layers,
                                     cfg.max_len)
        return losses.choose_loss(cfg.loss, n_items, cfg.auto_sampled_items, share)

    def _objective(self, user: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The loss of user vectors (after the head) predicting item indices `labels`."""
        module, kind = self.module_, self.loss_.loss
        if kind == "ce":
            return losses.full_softmax(module.logits(user), labels)
        k = self.config.n_negatives
        drawn = self.sampler_.draw(k, rng)
        negatives = torch.from_numpy(drawn).to(user.device)
        pos, neg = losses.candidate_logits(user, module.item_weights(), module.bias, labels, negatives)
        if kind == "gbce":
            return losses.gbce(pos, neg, labels, negatives, losses.gbce_beta(k, self.n_items_, self.config.gbce_t))
        log_expected = torch.from_numpy(self.sampler_.log_expected_count(drawn, k)).to(user.device, torch.float32)
        return losses.sampled_softmax(pos, neg, labels, negatives, log_expected)

    def _make_sampler(self, kind: str, train_seqs: Sequence[np.ndarray]) -> losses.NegativeSampler | None:
        cfg = self.config
        if kind == "sampled":
            return losses.NegativeSampler.from_sequences(train_seqs, self.n_items_, cfg.neg_alpha,
                                                         cfg.neg_uniform_share)
        return losses.NegativeSampler.uniform(self.n_items_) if kind == "gbce" else None

    # -- shared machinery

    def _positions(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        cols = torch.arange(width, device=lengths.device)[None, :].expand(len(lengths), width)
        if self.positions_from_end:
            return (lengths[:, None] - 1 - cols).clamp(min=0)
        return cols

    def _hidden(self, tokens: torch.Tensor, lengths: torch.Tensor,
                module: SequenceEncoder | None = None) -> torch.Tensor:
        return (module or self.module_).encode(tokens, self._positions(lengths, tokens.shape[1]))

    def _build(self) -> SequenceEncoder:
        return SequenceEncoder(self.n_items_, self.config, causal=self.causal)

    @property
    def device(self) -> torch.device:
        return next(self.module_.parameters()).device

    def fit(self, dataset: Dataset, progress: Progress | None = None,
            split: Split | None = None) -> SequentialRecommender:
        cfg = self.config
        progress = progress or Progress()
        self._remember_catalogue(dataset)
        device = loop.pick_device(cfg.train.device)
        train_seqs = split.train if split is not None else dataset.sequences()
        self.loss_ = choice = self.loss_choice(self.n_items_)
        self.sampler_ = self._make_sampler(choice.loss, train_seqs)
        windows = self.windows(train_seqs)
        if len(windows) == 0:
            raise DataError("no training sequences: every user history is empty",
                            hint="load a dataset with interactions, or relax the filters")
        batch_size = self._plan_batch(device, progress)
        steps_per_epoch = math.ceil(len(windows) / batch_size)
        plan = self.validation_plan(split, windows, steps_per_epoch)
        valid = self._valid_subset(split, plan.users)
        lcfg = self._loop_config(batch_size, plan.every, has_valid=valid is not None)
        trained, runs = [], []
        for member in range(cfg.members):
            mcfg = ensemble.member_config(lcfg, member, cfg.members)
            result = self._fit_member(train_seqs, windows, valid, mcfg, device, progress, member)
            if progress.cancelled and trained:  # a member cut short would only dilute the finished ones
                break
            trained.append(self.module_)
            runs.append((result, mcfg))
            if progress.cancelled:
                break
        reports = [{k: v for k, v in asdict(result).items() if k != "history"} for result, _ in runs]
        self._use_members(trained)
        self.fit_report_ = {"loss": choice.loss, "loss_reason": choice.reason, "validation": asdict(plan), **reports[0]}
        if cfg.members > 1:
            joint = validation_metrics(self, valid) if valid is not None and not progress.cancelled else None
            self.fit_report_["members"] = ensemble.report(cfg.train, cfg.members, reports, joint)
            self.fit_report_["improved"] = ensemble.improved(reports)
        self.transitions_ = None
        if cfg.transitions == "auto" and not progress.cancelled:
            # weighed before any refit: the refit trains on the validation items the weight is chosen on
            known = split.train_with_validation() if split is not None else None
            self.transitions_, self.fit_report_["transitions"] = fit_prior(self.score, self.n_items_, train_seqs,
                                                                           known, valid)
        if cfg.refit:
            self._refit_members(split, runs, loop.planned_steps(lcfg, steps_per_epoch), device, progress)
        return self

    def _use_members(self, modules: list[SequenceEncoder]) -> None:
        self.module_, self.members_, self.joined_ = modules[0], modules, None
        for module in modules:
            module.eval()

    def _refit_members(self, split: Split | None, runs: list[tuple[loop.LoopResult, TrainConfig]], schedule: int,
                       device: torch.device, progress: Progress) -> None:
        """Refit every member after all were early-stopped and validated, so no member trains with the refit's
        negatives; the report of member i (0: the fit report's own) gets its "refit"."""
        refitted, members = [], self.fit_report_.get("members", {}).get("each", [])
        for i, (module, (result, mcfg)) in enumerate(zip(self.members_, runs)):
            self.module_ = module
            which = f" member {i + 1} of {len(runs)}" if len(runs) > 1 else ""
            done = self._refit(split, result, mcfg, schedule, device, progress, which)
            (self.fit_report_ if i == 0 else members[i])["refit"] = done
            refitted.append(self.module_)
        self._use_members(refitted)

    def _fit_member(self, train_seqs: Sequence[np.ndarray], windows: SequenceWindows, valid: EvalSet | None,
                    lcfg: TrainConfig, device: torch.device, progress: Progress, member: int) -> loop.LoopResult:
        """Train one encoder into `module_` (validated alone) and return its loop's result."""
        with loop.seeded(lcfg.seed, device):  # parameter init draws from torch's generator
            self.module_ = self._init_module(train_seqs, lcfg.seed).to(device)
        self.members_ = [self.module_]
        which = f" (member {member + 1} of {self.config.members})" if self.config.members > 1 else ""
        steps_per_epoch = math.ceil(len(windows) / lcfg.batch_size)
        schedule = loop.planned_steps(lcfg, steps_per_epoch)
        progress.update(0, schedule, message=(
            f"training {self.family}{which} on {device.type}: {len(windows)} sequences, {steps_per_epoch} steps/epoch; "
            f"loss {self.loss_.reason}"))
        result = loop.train(_SequenceTask(self, windows, valid), lcfg, device, progress)
        if member == 0:  # the curves the pages draw are the first member's
            self.history_ = result.history
        return result

    def _refit(self, split: Split | None, first: loop.LoopResult, lcfg: TrainConfig, schedule: int,
               device: torch.device, progress: Progress, which: str = "") -> dict:
        """Train again from the same start on the training sequences plus each user's validation item, for the
        steps at which validation peaked, on the learning-rate schedule the first run planned: validation chose
        how long to train, and the final model then also learns the most recent thing every user did. The
        early-stopped model stays when the refit cannot run, or is cancelled; the report says why."""
        seqs = split.train_with_validation() if split is not None else None
        steps = refit.best_step(first.history, first.best_epoch)
        skip = refit.obstacle(seqs, steps, first, lcfg, progress)
        if skip:
            return {"done": False, "reason": skip}
        early_stopped, self.sampler_ = self.module_, self._make_sampler(self.loss_.loss, seqs)
        with loop.seeded(lcfg.seed, device):
            self.module_ = self._init_module(seqs, lcfg.seed).to(device)
        windows = self.windows(seqs)
        rcfg = dataclasses.replace(lcfg, batch_size=first.batch_size, max_steps=steps, patience=0, cpu_budget_s=0.0,
                                   checkpoint_dir="")
        progress.update(0, steps, message=f"refitting{which} on training + validation items: {steps} steps, "
                                          f"{len(windows)} sequences")
        result = loop.train(_SequenceTask(self, windows, None), rcfg, device, progress, schedule_steps=schedule)
        if result.stopped == "cancelled":
            self.module_ = early_stopped
            return {"done": False, "reason": "cancelled: the early-stopped model is kept"}
        return {"done": True, "steps": result.steps, "sequences": len(windows), "cpu_seconds": round(result.cpu_seconds, 2),
                "added_items": int(sum(map(len, seqs)) - sum(map(len, split.train)))}

    def windows(self, train_seqs: Sequence[np.ndarray]) -> SequenceWindows:
        cfg = self.config
        return SequenceWindows(train_seqs, cfg.max_len, cfg.window_stride or max(1, cfg.max_len // 2),
                               crops=cfg.train_sequences == "crops")

    def _init_module(self, train_seqs: Sequence[np.ndarray], seed: int) -> SequenceEncoder:
        module = self._build()
        if self.config.item_init == "svd":
            init_items_from_svd(module.item_emb, train_seqs, self.n_items_, seed)
        return module

    def _loop_config(self, batch_size: int, every: int, has_valid: bool) -> TrainConfig:
        """The loop's settings as given, with the batch that fits, the planned validation cadence, and no
        early stop without validation users."""
        train = self.config.train
        return dataclasses.replace(train, batch_size=batch_size, patience=train.patience if has_valid else 0,
                                   eval_every=every)

    def validation_plan(self, split: Split | None, windows: SequenceWindows, steps_per_epoch: int) -> ValidationPlan:
        """How many validation users (a seeded sample) and how often, so that validation costs at most
        `valid_share` of the training compute between two validations.

        Costs are multiply-adds from the model's shape: the encoder per token (layers x (12 hidden^2 +
        2 tokens x hidden)); training a window is three passes (forward, backward) over its tokens plus the
        output layer at its target positions (the catalogue, or the sampled candidates); validating a user
        is one pass over their history plus scoring and ranking the catalogue. The default cadence
        (`eval_every=0`) is about every `eval_steps` optimizer steps; past that, fewer users down to MIN_VALID_USERS,
        then (unless `eval_every` was set) validation every few epochs. Counts, not clocks: the plan is the same on a busy machine."""
        cfg, train = self.config, self.config.train
        n_valid = len(split.valid) if split is not None else 0
        cap = min(n_valid, train.max_valid_users or n_valid)
        every = train.eval_every or max(1, round(train.eval_steps / max(1, steps_per_epoch)))
        if not cap or cfg.valid_share <= 0:
            return ValidationPlan(cap, n_valid, every, 0.0)
        per_user = self._validation_cost(split.valid.histories)
        per_epoch = self._training_cost(windows)
        afford = cfg.valid_share / (1 - cfg.valid_share) * per_epoch / per_user  # users per epoch of training
        users = min(cap, max(int(afford * every), min(cap, MIN_VALID_USERS)))
        if not train.eval_every:  # a cadence the user chose stays; the automatic one stretches
            every = max(every, math.ceil(users / afford))
        return ValidationPlan(users, n_valid, every, round(users * per_user / (users * per_user + every * per_epoch), 4))

    def _encoder_cost(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> float:
        """Multiply-adds of the encoder over rows padded to `tokens` each (`rows`: how many rows per entry, default 1)."""
        cfg = self.config
        per_row = cfg.layers * tokens * (BLOCK_WEIGHTS[cfg.block] * cfg.hidden ** 2 + 2 * tokens * cfg.hidden)
        return float((per_row if rows is None else per_row * rows).sum())

    def _training_cost(self, windows: SequenceWindows) -> float:
        cfg, tokens = self.config, windows.length.astype(np.float64)
        targets = tokens.sum() * self._target_positions() / cfg.max_len
        candidates = self.n_items_ if self.loss_choice(self.n_items_).loss == "ce" else cfg.n_negatives + 1
        if cfg.batch_order == "shuffled":  # a mixed batch pads every row to its longest window
            encoder = self._encoder_cost(*mixed_batch_widths(windows.length, cfg.train.batch_size))
        else:
            encoder = self._encoder_cost(tokens)
        return 3 * (encoder + targets * candidates * cfg.hidden)

    def _validation_cost(self, histories: Sequence[np.ndarray]) -> float:
        """Multiply-adds per validation user, at the padded widths its chunk is scored at."""
        cfg = self.config
        lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        rows = loop.score_chunk_rows(max(self.n_items_, cfg.hidden), cfg.score_batch_size)
        widths = padded_widths(np.minimum(lengths, cfg.max_len - 1) + 1, VALIDATION_BATCH_USERS, rows)
        per_user_ranking = self.n_items_ * (cfg.hidden + 8)  # scores, history mask, rank counts
        return self._encoder_cost(widths.astype(np.float64)) / max(1, len(widths)) + per_user_ranking

    def _plan_batch(self, device: torch.device, progress: Progress) -> int:
        cfg = self.config

        def need(batch: int) -> int:
            return loop.estimate_memory(self.n_items_, cfg.max_len, cfg.hidden, batch, cfg.layers, cfg.heads,
                                        output_positions=self._output_positions(self.n_items_))

        knobs = {"batch_size": cfg.train.batch_size, "max_len": cfg.max_len, "hidden": cfg.hidden, "n_items": self.n_items_}
        return loop.plan_batch_size(cfg.train.batch_size, need, device, knobs, progress=progress)

    def _valid_subset(self, split: Split | None, users: int) -> EvalSet | None:
        if split is None or len(split.valid) == 0 or users <= 0:
            return None
        return sample_users(split.valid, users, self.config.train.seed)

    # -- inference

    def _require_fitted(self) -> None:
        if not self.members_:
            raise ModelError(f"the {self.family} model is not trained yet", hint="call fit() or load a saved model")

    @torch.no_grad()
    def _map_chunks(self, histories: Sequence[np.ndarray], fn, width: int) -> torch.Tensor:
        """Apply `fn(user_vectors) -> [b, width]` over chunks of similar history lengths; rows back in input order."""
        self._require_fitted()
        for module in self.members_:
            if module.training:  # eval() walks every submodule: 12 % of a served request when called each time
                module.eval()
        flat, starts, lengths = histories_to_tokens(histories, self.config.max_len - 1, self.n_items_)
        out = torch.empty(len(histories), width, dtype=torch.float32)
        order = np.argsort(lengths, kind="stable")
        padded = lengths[order] + 1  # + the readout token
        rows = loop.score_chunk_rows(max(width, self.config.hidden), self.config.score_batch_size)
        tokens_cap, done = SCORE_CHUNK_TOKENS, 0
        while done < len(order):
            end = loop.chunk_end(padded, done, rows, tokens_cap)
            idx = order[done:end]
            try:
                tokens, lens = self._context(flat, starts[idx], lengths[idx])
                out[torch.from_numpy(idx)] = fn(self._readout(tokens, lens)).float().cpu()
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not loop.is_oom(err) or len(idx) == 1:
                    raise
                rows, tokens_cap = max(1, len(idx) // 2), max(1, tokens_cap // 2)  # halve the chunk and retry it
                continue
            done = end
        return out

    def _readout(self, tokens: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        device = self.device
        t = torch.from_numpy(tokens).to(device)
        lens = torch.from_numpy(lengths).to(device)
        rows = torch.arange(len(lens), device=device)
        users = [m.head(self._hidden(t, lens, m)[rows, lens - 1]) for m in self.members_]
        # members: the users' vectors side by side, against the items' side by side (`ensemble.output_layer`)
        return users[0] if len(users) == 1 else torch.cat(users, dim=1)

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return self._scores(histories, None)

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        """User vectors against the output weights (and biases) of `items` only."""
        self._require_fitted()
        return self._scores(histories, torch.from_numpy(self._check_items(items)).to(self.device))

    def _scores(self, histories: Sequence[np.ndarray], index: torch.Tensor | None) -> torch.Tensor:
        self._require_fitted()
        weights, bias = self._output_layer()
        if index is not None:
            weights, bias = weights[index], (bias[index] if bias is not None else None)

        def logits(user: torch.Tensor) -> torch.Tensor:
            out = user @ weights.T
            return out + bias if bias is not None else out

        out = self._map_chunks(histories, logits, len(weights))
        if self.transitions_ is not None:
            self.transitions_.add_to(out, histories, index)
        return out

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The encoder's user vectors (with `transitions`, scores also add the prior, which no vector holds)."""
        self._require_fitted()
        return self._map_chunks(histories, lambda u: u, self.config.hidden * len(self.members_)).numpy()

    def item_embeddings(self) -> np.ndarray:
        """The item vectors a user vector is scored against (members: side by side)."""
        self._require_fitted()
        return self._output_layer()[0].detach().float().cpu().numpy().copy()

    def _output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`ensemble.output_layer` of the members; for several, joined once per set of members (a copy of every
        member's item weights that a served request would otherwise pay for)."""
        if len(self.members_) == 1:
            return ensemble.output_layer(self.members_)  # views of the one module's weights: nothing to copy
        if self.joined_ is None or self.joined_[0] != self.members_:
            self.joined_ = (list(self.members_), *ensemble.output_layer(self.members_))
        return self.joined_[1], self.joined_[2]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        prior = self.transitions_.tensors() if self.transitions_ is not None else {}
        return {**ensemble.joined_tensors(self.members_), **prior}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        self.transitions_ = TransitionPrior.pop_from(tensors, self.config.transitions)
        self.members_ = [self._load_member(part) for part in ensemble.split_tensors(tensors, self.config.members)]
        self.module_, self.joined_ = self.members_[0], None

    def _load_member(self, tensors: dict[str, torch.Tensor]) -> SequenceEncoder:
        module = self._build()
        try:
            # assign: the module keeps the tensors it is given, mapped from the file when `load_model` gives them
            # (copying them in would make every process's weights private); a write makes private pages. Only a
            # tensor saved in another dtype than the module's is converted (copied), as a copying load would.
            own = module.state_dict()
            module.load_state_dict({name: value.to(own[name].dtype) if name in own else value
                                    for name, value in tensors.items()}, assign=True)
        except RuntimeError as err:
            raise ModelError(f"saved weights do not match the {self.family} config ({err})",
                            hint="the folder's config.json and model.safetensors come from different models") from err
        return module.eval()


class _SequenceTask:
    """Adapter between a sequential recommender and the generic loop in `recsys_core.models.loop`."""

    def __init__(self, model: SequentialRecommender, windows: SequenceWindows, valid: EvalSet | None) -> None:
        self.model, self.windows, self.valid = model, windows, valid
        self.module = model.module_

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.windows) / batch_size)

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        return self.windows.batches(batch_size, rng, by_length=self.model.config.batch_order == "by_length")

    def loss(self, batch: np.ndarray, rng: np.random.Generator, rows: slice = slice(None)) -> torch.Tensor:
        tokens, lengths = self.windows.padded(batch)
        device = self.model.device
        return self.model._batch_loss(torch.from_numpy(tokens).to(device), torch.from_numpy(lengths).to(device), rng,
                                      rows)

    def validate(self, progress: Progress | None = None) -> dict[str, float]:
        if self.valid is None:
            return {}
        return validation_metrics(self.model, self.valid, progress)


def validation_metrics(model: Recommender, valid: EvalSet, progress: Progress | None = None) -> dict[str, float]:
    """NDCG@10 / HR@10 with full ranking, through the project's evaluator (a cancelled `progress` stops it
    between batches of users)."""

    result = evaluate(model, valid, ks=(10,), progress=progress, batch_size=VALIDATION_BATCH_USERS)
    return {k: float(v) for k, v in result.items() if k in ("ndcg@10", "hr@10")}
