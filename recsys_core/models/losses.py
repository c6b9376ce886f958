"""Training objectives of the sequential models (BERT4Rec, SASRec+), and the automatic choice between them.

- ce: softmax over the whole catalogue. Exact, but its logits cost rows x n_items per step: at 100k
  items it is most of a step's time and memory.
- sampled: softmax over the positive and `n_negatives` items shared by the batch, drawn from a proposal
  q = (1 - u) * count^a / sum + u / n_items (popular items are the hard negatives; the uniform share keeps
  every item drawable). Each negative's logit is lowered by log(k * q_j), its expected number of draws
  (logQ correction, Bengio & Senecal 2008): the sum over the draws then estimates the full partition
  function without bias, so as k grows the loss tends to the full cross-entropy instead of to a
  popularity-skewed one. The positive is always a candidate (inclusion probability 1, correction log 1 = 0);
  a draw that equals a row's positive (an accidental hit) is masked out of that row.
- gbce: generalised binary cross-entropy of gSASRec (Petrov & Macdonald, RecSys 2023): uniform negatives,
  and the positive's probability raised to beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n - 1),
  which undoes the overconfidence that negative sampling teaches (t = 1: calibrated as the full softmax).
  Every logit enters it shifted by the constant log(beta / k), the rate at which the loss balances when all
  items score alike (as RetinaNet starts its classifier at the prior): a constant changes no ranking, but
  without it a model with tied item embeddings spends hundreds of steps pushing every score down through
  the item geometry, ranking popular items last meanwhile (measured on the demo: NDCG@10 0.001 after 3
  epochs without the shift, 0.076 with it; popularity 0.074).
- auto: ce up to `auto_sampled_items` items, sampled above; the choice and why land in the fit report.

Every draw comes from the `np.random.Generator` the training loop hands each batch, so a seed replays a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recsys_core.errors import ConfigError

LOSSES = ("auto", "ce", "sampled", "gbce")
# float32 logits of a masked-out accidental hit: exp() is exactly 0, and no inf - inf can make a NaN
_MASKED = -1e9


@dataclass(frozen=True)
class LossChoice:
    """The objective a fit uses and why, in words for the run's record."""

    loss: str  # "ce", "sampled" or "gbce"
    reason: str


def choose_loss(requested: str, n_items: int, threshold: int, softmax_share: float) -> LossChoice:
    """The objective for a catalogue of `n_items`; `softmax_share` is the full softmax's estimated share of
    a step's cost (said in the reason, so a record shows what auto weighed)."""
    if requested not in LOSSES:
        raise ConfigError(f"unknown loss {requested!r}", setting="loss", hint=f"use one of {', '.join(LOSSES)}")
    times = 1.0 / max(1e-9, 1.0 - softmax_share)
    share = f"the full softmax is ~{softmax_share:.0%} of a step's cost (a step ~{times:.1f}x a sampled one)"
    if requested != "auto":
        return LossChoice(requested, f"{requested}: set in the config ({n_items:,} items; {share})")
    if n_items > threshold:
        return LossChoice("sampled", f"sampled: {n_items:,} items > auto_sampled_items={threshold:,}, where {share}")
    return LossChoice("ce", f"ce: {n_items:,} items <= auto_sampled_items={threshold:,}, where {share}")


def softmax_share(n_items: int, output_rows: float, positions: float, hidden: int, layers: int, max_len: int) -> float:
    """Share of one training step's cost spent on full-catalogue logits: `output_rows` rows x n_items x
    hidden multiply-adds against each position's transformer layers (projections 12 h^2, attention 2 T h),
    the latter doubled for their element-wise work (norms, GELU, attention softmax), which is what fits
    the CPU measurements of `bench/scale.py --loss-sweep` (SASRec+ ce vs sampled: 6.2x at 16.7k items)."""
    logits = output_rows * n_items * hidden
    encoder = 2 * positions * layers * (12 * hidden * hidden + 2 * max_len * hidden)
    return logits / max(1.0, logits + encoder)


class NegativeSampler:
    """Negatives shared by a batch, drawn with replacement from q = (1 - u) * count^alpha / sum + u / n."""

    def __init__(self, counts: np.ndarray, alpha: float, uniform_share: float) -> None:
        weight = np.asarray(counts, dtype=np.float64) ** alpha  # 0 ** 0 = 1: alpha 0 is uniform
        total = weight.sum()
        share = 1.0 if total <= 0 else uniform_share
        popular = weight / total if total > 0 else np.zeros_like(weight)
        self.q = (1.0 - share) * popular + share / len(weight)
        self.cdf = np.cumsum(self.q)
        self.cdf /= self.cdf[-1]

    @classmethod
    def uniform(cls, n_items: int) -> NegativeSampler:
        return cls(np.ones(n_items), 0.0, 1.0)

    @classmethod
    def from_sequences(cls, seqs: Sequence[np.ndarray], n_items: int, alpha: float,
                       uniform_share: float) -> NegativeSampler:
        """Proposal from how often each item occurs in the training sequences."""
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs] or [np.zeros(0, np.int64)])
        return cls(np.bincount(flat, minlength=n_items), alpha, uniform_share)

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """`k` item indices (int64), with replacement."""
        return np.minimum(np.searchsorted(self.cdf, rng.random(k), side="right"), len(self.cdf) - 1)

    def log_expected_count(self, items: np.ndarray, k: int) -> np.ndarray:
        """log(k * q_j): how many times `k` draws are expected to pick each of `items`."""
        return np.log(k * self.q[items])


def candidate_logits(user: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                     negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive logits [R], negative logits [R, K]) of user rows against their labels and the shared
    negatives, reading only those rows of the output layer."""
    pos = (user * weights[labels]).sum(-1)
    neg = user @ weights[negatives].T
    if bias is not None:
        pos, neg = pos + bias[labels], neg + bias[negatives][None, :]
    return pos.float(), neg.float()


def full_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the whole catalogue (fp32 softmax)."""
    return F.cross_entropy(logits.float(), labels)


def sampled_softmax(pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
                    log_expected: torch.Tensor) -> torch.Tensor:
    """Softmax over [positive, negatives] with logQ-corrected negatives and accidental hits masked."""
    neg = (neg - log_expected[None, :]).masked_fill(negatives[None, :] == labels[:, None], _MASKED)
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=logits.device))


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n - 1) the sampling rate (at most 1)."""
    alpha = min(1.0, n_negatives / max(1, n_items - 1))
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
         beta: float) -> torch.Tensor:
    """gBCE: binary cross-entropy of the positive with its probability raised to beta (label 1) and of the
    negatives (label 0), averaged over each row's candidates as gSASRec does; accidental hits are left out.

    gSASRec feeds BCE the transformed logit s' = -log(sigmoid(s)^-beta - 1), whose sigmoid is sigmoid(s)^beta;
    its loss -log sigmoid(s') is exactly -beta * log sigmoid(s), computed here without the float64 clamps."""
    keep = (negatives[None, :] != labels[:, None]).to(neg.dtype)
    shift = math.log(beta / len(negatives))
    positive = -beta * F.logsigmoid(pos + shift)
    negative = (F.softplus(neg + shift) * keep).sum(dim=1)  # -log(1 - sigmoid(s))
    return ((positive + negative) / (1.0 + keep.sum(dim=1))).mean()


def sampled_share(n_negatives: int, n_items: int) -> float:
    """Share of the full catalogue's logits that a sampled loss computes per output row."""
    return min(1.0, (n_negatives + 1) / max(1, n_items))
