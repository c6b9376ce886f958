"""A first-order transition prior for the sequential encoders (`transitions="auto"`): how often each item followed
the history's last item in the training sequences, added to the encoder's scores with a weight chosen on
validation.

Why: on the demo the encoders (and their seed ensembles) miss exact item-to-item successions that a count table
keeps; the prior, weighted on validation, lifted single models' test NDCG@10 by 0.0026-0.0097 on every seed of the demo,
ML-100k and the ML-1M subset (ensembles: +0.0044 on the demo, +0.0024 on ML-100k, a tie on ML-1M; README, "The transition prior").

The prior of a history whose last item is `a` is the z-score, over the whole catalogue, of log(1 + count(a -> j)):
zero for a history without items or an item nothing ever followed, and the same for an item whether the whole
catalogue or a subset of it is scored. The weight is picked from `WEIGHTS` on the validation users with the table
of the training sequences (what was known before the validation items); the model then keeps the table of the
training and validation sequences, as a refit would, so a test history's last item (its validation item) has its
successors counted. Test items are never counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from recsys_core.data.splits import EvalSet
from recsys_core.errors import ModelError
from recsys_core.evaluation.metrics import rank_metrics
from recsys_core.models.loop import cpu_time

TRANSITION_MODES = ("off", "auto")
WEIGHTS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)  # 0.075-0.15 won on the demo's validation; 0 keeps the encoder
PREFIX = "transitions."  # the saved tensors' names
CELLS = 2**24  # users x items a chunk of the prior holds (64 MB), so 100k items add it 167 users at a time


class TransitionPrior:
    """The successor counts of every item (CSR over item indices) and the weight they are added with."""

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, logs: torch.Tensor, weight: float) -> None:
        self.indptr, self.indices, self.logs, self.weight = indptr.long(), indices.long(), logs.float(), float(weight)
        self.n_items = len(self.indptr) - 1
        rows = torch.repeat_interleave(torch.arange(self.n_items), self.indptr[1:] - self.indptr[:-1])
        sums = torch.zeros(self.n_items).index_add_(0, rows, self.logs)
        squares = torch.zeros(self.n_items).index_add_(0, rows, self.logs ** 2)
        self.mean = sums / self.n_items
        self.std = (squares / self.n_items - self.mean ** 2).clamp_min(0).sqrt()

    @classmethod
    def count(cls, sequences: Sequence[np.ndarray], n_items: int, weight: float = 0.0) -> TransitionPrior:
        """The table of `sequences` (item indices in order): one count per consecutive pair."""
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] or [np.zeros(0, dtype=np.int64)])
        within = np.ones(max(len(flat) - 1, 0), dtype=bool)  # pair (i, i + 1) lies inside one sequence
        ends = np.cumsum([len(s) for s in sequences], dtype=np.int64)[:-1] - 1
        within[ends[(ends >= 0) & (ends < len(within))]] = False
        cells, counts = np.unique(flat[:-1][within] * n_items + flat[1:][within], return_counts=True)
        rows, cols = np.divmod(cells, n_items)
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_items), out=indptr[1:])
        return cls(torch.from_numpy(indptr), torch.from_numpy(cols), torch.from_numpy(np.log1p(counts)), weight)

    def prior(self, last: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """[len(last), items] z-scores of log(1 + count(last -> item)); `last` -1 (no history) scores 0."""
        rows = torch.zeros(len(last), self.n_items)
        known = torch.nonzero(last >= 0).flatten()
        if len(known):
            starts = self.indptr[last[known]]
            sizes = self.indptr[last[known] + 1] - starts
            owner = torch.repeat_interleave(known, sizes)
            # each row's successors: its start plus 0, 1, ... (one arange over all rows, minus each row's offset)
            cells = torch.arange(len(owner)) + torch.repeat_interleave(starts - (torch.cumsum(sizes, 0) - sizes), sizes)
            rows[owner, self.indices[cells]] = self.logs[cells]
            mean, std = self.mean[last[known]], self.std[last[known]]
            rows[known] = torch.where(std[:, None] > 0, (rows[known] - mean[:, None]) / std.clamp_min(1e-12)[:, None],
                                      torch.zeros(()))
        return rows if index is None else rows[:, index.cpu()]

    def add_to(self, scores: torch.Tensor, histories: Sequence[np.ndarray], index: torch.Tensor | None = None) -> None:
        """Add weight x prior to `scores` ([len(histories), items]) in place, a chunk of users at a time."""
        if self.weight == 0:
            return
        last, rows = last_items(histories), max(1, CELLS // self.n_items)
        for start in range(0, len(last), rows):
            chunk = slice(start, start + rows)
            scores[chunk] += self.weight * self.prior(last[chunk], index).to(scores.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}indptr": self.indptr, f"{PREFIX}indices": self.indices, f"{PREFIX}logs": self.logs,
                f"{PREFIX}weight": torch.tensor(self.weight)}

    @classmethod
    def pop_from(cls, tensors: dict[str, torch.Tensor], mode: str) -> TransitionPrior | None:
        """The prior saved among a model's tensors (removed from them), or None when it has none; a prior under a
        config whose `transitions` (`mode`) is off is refused, as its scores would not be the config's."""
        mine = {k[len(PREFIX):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(PREFIX)]}
        if not mine:
            return None
        if mode != "auto":
            raise ModelError(f"saved weights hold a transition prior, but config.json sets transitions={mode}",
                             hint="the folder's model.safetensors was edited or mixed with another model's; re-export it")
        return cls(mine["indptr"], mine["indices"], mine["logs"], float(mine["weight"]))


def last_items(histories: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.tensor([int(h[-1]) if len(h) else -1 for h in histories], dtype=torch.long)


def choose_weight(score: Callable[[Sequence[np.ndarray]], torch.Tensor], table: TransitionPrior,
                  valid: EvalSet) -> dict[float, float]:
    """Validation NDCG@10 of the encoder's scores plus each of `WEIGHTS` x the prior, over `valid`'s users (the
    encoder scores each user once; up to 512 users a batch, fewer where the catalogue is large)."""
    sums, batch = dict.fromkeys(WEIGHTS, 0.0), max(1, min(512, CELLS // table.n_items))
    for start in range(0, len(valid.histories), batch):
        histories = valid.histories[start:start + batch]
        targets, base = valid.targets[start:start + batch], score(histories)
        prior = table.prior(last_items(histories))
        for w in WEIGHTS:
            ndcg = rank_metrics(base + w * prior, targets, exclude=histories, ks=(10,))["ndcg@10"]
            sums[w] += float(ndcg.sum())
    return {w: total / max(len(valid.histories), 1) for w, total in sums.items()}


def fit_prior(score: Callable[[Sequence[np.ndarray]], torch.Tensor], n_items: int, train: Sequence[np.ndarray],
              known: Sequence[np.ndarray] | None, valid: EvalSet | None) -> tuple[TransitionPrior | None, dict]:
    """The prior a fitted encoder keeps (None at weight 0) and the fit report's "transitions": the weight is chosen
    on `valid` with the table of the `train` sequences, and the kept table counts `known` (the training sequences
    with the validation items; None: `train` only, where the split does not put them at the end)."""
    if valid is None:
        return None, {"weight": 0.0, "reason": "no validation users to weigh it on"}
    start = cpu_time()
    ndcg = choose_weight(score, TransitionPrior.count(train, n_items), valid)
    weight = max(ndcg, key=ndcg.get)  # WEIGHTS starts at 0: a tie keeps the encoder alone
    kept = TransitionPrior.count(known if known is not None else train, n_items, weight) if weight > 0 else None
    # its own CPU seconds: the time estimate's probe reads them (a refit may run after the prior)
    return kept, {"weight": weight, "valid_ndcg@10": {str(w): round(v, 5) for w, v in ndcg.items()},
                  "counted": "training and validation sequences" if known is not None else "training sequences",
                  "cpu_s": cpu_time() - start}
