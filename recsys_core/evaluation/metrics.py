"""Full-ranking evaluation: every catalogue item is a candidate, no sampled negatives.

Each user's scored history is excluded from the ranking (the held-out target never is, even when
the user consumed it before). Ranks are pessimistic on ties: a target's rank is the number of
other candidates scoring at least as high, plus one, so a model that scores everything equally
gets no credit. With several targets per user (temporal split) HR@K is "any target in the top K",
Recall@K = hits / min(K, |targets|), NDCG@K uses the ideal DCG of min(K, |targets|) hits and
MRR@K the best-ranked target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.progress import Progress

if TYPE_CHECKING:  # evaluation ranks any scorer; models import it for validation
    from recsys_core.models.base import Recommender

KS = (5, 10, 20)
# Score rows held at once; keeps a batch to ~128 MiB of float32 whatever the catalogue size.
_MAX_CELLS = 2**25
# Up to this many targets per user, one comparison pass per target beats sorting every row (~10x for one).
_COMPARE_TARGETS = 16

Exclude = Sequence[np.ndarray] | torch.Tensor | None


def train_popularity(split: Split) -> np.ndarray:
    """Interaction count per item in the split's training part (what popularity bias is measured against)."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in split.train] or [np.zeros(0, np.int64)])
    return np.bincount(flat, minlength=split.n_items)


def popularity_percentile(item_popularity: np.ndarray) -> np.ndarray:
    """Mid-rank percentile in [0, 1] of each item's popularity (ties share a value).

    Recommending uniformly at random averages 0.5; always the most popular items approaches 1.
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    ordered = np.sort(pop)
    below = np.searchsorted(ordered, pop, side="left")
    equal = np.searchsorted(ordered, pop, side="right") - below
    return ((below + 0.5 * equal) / max(len(pop), 1)).astype(np.float32)


def _mask(rows: Exclude, shape: tuple[int, int]) -> torch.Tensor:
    """Boolean [b, n] mask from per-row index arrays (or a ready mask)."""
    if rows is None:
        return torch.zeros(shape, dtype=torch.bool)
    if isinstance(rows, torch.Tensor):
        if rows.shape != shape or rows.dtype != torch.bool:
            raise ValueError(f"exclude mask must be bool {shape}, got {rows.dtype} {tuple(rows.shape)}")
        return rows
    if len(rows) != shape[0]:
        raise ValueError(f"got {len(rows)} index arrays for {shape[0]} score rows")
    arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    out = torch.zeros(shape, dtype=torch.bool)
    if lengths.sum():
        flat = np.concatenate(arrays)
        if flat.min() < 0 or flat.max() >= shape[1]:
            raise DataError(f"item index outside the catalogue of {shape[1]} items in targets/exclusions")
        out[torch.from_numpy(np.repeat(np.arange(len(arrays)), lengths)), torch.from_numpy(flat)] = True
    return out


def _all_finite(scores: torch.Tensor) -> bool:
    # One float64 sum is finite exactly when every float32 score is: ~50x cheaper than isfinite.
    return scores.dtype != torch.float64 and bool(torch.isfinite(scores.sum(dtype=torch.float64)))


def check_finite(scores: torch.Tensor, ignore: torch.Tensor | None = None, who: str = "the model",
                 users: np.ndarray | None = None) -> None:
    """Raise a ModelError naming the users whose (non-ignored) scores are NaN or infinite."""
    if _all_finite(scores):
        return
    bad = ~torch.isfinite(scores)
    if ignore is not None:
        bad &= ~ignore
    rows = bad.any(dim=1).nonzero().flatten().numpy()
    if len(rows):
        ids = users[rows] if users is not None else rows
        shown = ", ".join(str(int(i)) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise ModelError(f"{who} returned NaN or infinite scores for {len(rows)} user(s) (user indices {shown})",
                        hint="the model diverged or was saved mid-training: retrain it (e.g. lower the learning rate)")


def _masked(scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """A copy of the scores with excluded items at -inf (a model may hand out a tensor it keeps)."""
    scores = scores if scores.is_floating_point() else scores.float()
    return scores.masked_fill(exclude, float("-inf"))


def _ranks(masked: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 1-based ranks [b, m] of each user's targets, and which slots are real targets."""
    counts = targets.sum(dim=1)
    m = max(int(counts.max()) if len(counts) else 0, 1)
    rows, cols = targets.nonzero(as_tuple=True)
    slot = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    values = torch.full((masked.shape[0], m), float("inf"), dtype=masked.dtype)
    values[rows, slot] = masked[rows, cols]
    # Candidates scoring >= the target, the target itself included: exactly its pessimistic rank.
    if m <= _COMPARE_TARGETS:
        ranks = torch.stack([(masked >= values[:, j:j + 1]).sum(dim=1) for j in range(m)], dim=1)
    else:
        ascending = torch.sort(masked, dim=1).values
        ranks = masked.shape[1] - torch.searchsorted(ascending, values, side="left")
    valid = torch.arange(m).unsqueeze(0) < counts.unsqueeze(1)
    return ranks, valid


def _metrics_from_ranks(ranks: torch.Tensor, valid: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    n_targets = valid.sum(dim=1)
    best = torch.where(valid, ranks, torch.iinfo(ranks.dtype).max).min(dim=1).values
    out = {"rank": best.double()}
    discount = 1.0 / torch.log2(ranks.double() + 1.0)
    for k in ks:
        hit = valid & (ranks <= k)
        hits = hit.sum(dim=1).double()
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0), 0)
        ideal_k = ideal[(n_targets.clamp(1, k) - 1)]
        out[f"hr@{k}"] = (hits > 0).double()
        out[f"recall@{k}"] = hits / n_targets.clamp(max=k).clamp_min(1).double()
        out[f"ndcg@{k}"] = torch.where(hit, discount, 0.0).sum(dim=1) / ideal_k
        out[f"mrr@{k}"] = torch.where(best <= k, 1.0 / best.double(), 0.0)
    return out


def rank_metrics(scores: torch.Tensor, targets: Sequence[np.ndarray], exclude: Exclude = None,
                 ks: Sequence[int] = KS) -> dict[str, torch.Tensor]:
    """Per-user metrics from a [b, n] score matrix: keys rank, hr@K, recall@K, ndcg@K, mrr@K (float64 [b]).

    `exclude` (per-row item indices or a bool mask) removes items from the ranking, except targets.
    """
    shape = tuple(scores.shape)
    target_mask = _mask(targets, shape)
    if len(targets) and not bool(target_mask.any(dim=1).all()):
        raise DataError("every evaluated user needs at least one target item")
    exclude_mask = _mask(exclude, shape) & ~target_mask
    check_finite(scores, exclude_mask)
    ranks, valid = _ranks(_masked(scores, exclude_mask), target_mask)
    return _metrics_from_ranks(ranks, valid, _check_ks(ks))


def top_k(scores: torch.Tensor, k: int, exclude: Exclude = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row as (indices long [b, k], scores [b, k]), excluded items never returned.

    A row with fewer than k candidates is padded with index -1 and score -inf; a score of -inf
    counts as filtered out, NaN or +inf raises.
    """
    shape = tuple(scores.shape)
    masked = _masked(scores, _mask(exclude, shape))
    if not _all_finite(scores):
        check_finite(masked, masked == float("-inf"))
    return _top_k_masked(masked, k)


def _top_k_masked(masked: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(masked, min(k, masked.shape[1]), dim=1)
    return indices.masked_fill(values == float("-inf"), -1), values


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"cut-offs K must be positive integers, got {list(ks)}")
    return ks


def evaluate(model: Recommender, evalset: EvalSet, ks: Sequence[int] = KS, item_popularity: np.ndarray | None = None,
             batch_size: int = 1024, progress: Progress | None = None, per_user: bool = False) -> dict:
    """Mean full-ranking metrics of `model` on `evalset`.

    Keys: "users", and per K: "hr@K", "recall@K", "ndcg@K", "mrr@K", "coverage@K" (fraction of the
    catalogue in anyone's top K) and, given training `item_popularity`, "pop_bias@K" (mean
    popularity percentile of recommended items, 0.5 = unbiased). With `per_user`, "per_user" is a
    DataFrame (one row per evaluated user: user, history_len, n_targets, rank, metrics,
    target_popularity) for breakdowns. A cancelled `progress` stops early: "cancelled" is then True
    and the means cover the users done.
    """
    ks = _check_ks(ks)
    n_items = model.n_items_
    pct = None
    if item_popularity is not None:
        if len(item_popularity) != n_items:
            raise DataError(f"item_popularity has {len(item_popularity)} entries for {n_items} items",
                            hint="pass the popularity of the catalogue the model was trained on")
        pct = torch.from_numpy(popularity_percentile(item_popularity))
    batch = max(1, min(int(batch_size), _MAX_CELLS // max(n_items, 1)))
    parts: list[dict[str, torch.Tensor]] = []
    seen = torch.zeros((len(ks), n_items), dtype=torch.bool)
    total, done = len(evalset), 0
    for start in range(0, total, batch):
        stop = min(total, start + batch)
        part = _evaluate_batch(model, evalset, start, stop, ks, pct, seen)
        parts.append(part)
        done = stop
        if progress is not None:
            progress.update(done, total, message="evaluating")
            if progress.cancelled:
                break
    return _summarise(parts, evalset, done, ks, seen, item_popularity, per_user)


def _evaluate_batch(model: Recommender, evalset: EvalSet, start: int, stop: int, ks: list[int],
                    pct: torch.Tensor | None, seen: torch.Tensor) -> dict[str, torch.Tensor]:
    histories, targets = evalset.histories[start:stop], evalset.targets[start:stop]
    scores = model.score(histories)
    shape = (stop - start, model.n_items_)
    if tuple(scores.shape) != shape:
        raise ModelError(f"model '{model.family}' returned scores of shape {tuple(scores.shape)}, expected {shape}")
    target_mask = _mask(targets, shape)
    if not bool(target_mask.any(dim=1).all()):
        raise DataError("every evaluated user needs at least one target item")
    exclude = _mask(histories, shape) & ~target_mask
    check_finite(scores, exclude, who=f"model '{model.family}'", users=np.asarray(evalset.users[start:stop]))
    masked = _masked(scores, exclude)
    out = _metrics_from_ranks(*_ranks(masked, target_mask), ks)
    top, _ = _top_k_masked(masked, ks[-1])
    for i, k in enumerate(ks):
        items = top[:, :k]
        real = items >= 0
        seen[i, items[real]] = True
        if pct is not None:
            out[f"pop_bias@{k}"] = (torch.where(real, pct[items.clamp_min(0)], 0.0).sum(1) / real.sum(1).clamp_min(1)).double()
    return out


def _summarise(parts: list[dict[str, torch.Tensor]], evalset: EvalSet, done: int, ks: list[int],
               seen: torch.Tensor, item_popularity: np.ndarray | None, per_user: bool) -> dict:
    columns = {key: torch.cat([p[key] for p in parts]).numpy() for key in parts[0]} if parts else {}
    result: dict = {"users": done}
    for k_index, k in enumerate(ks):
        for name in ("hr", "recall", "ndcg", "mrr", "pop_bias"):
            key = f"{name}@{k}"
            if key in columns:
                result[key] = float(columns[key].mean()) if done else float("nan")
        result[f"coverage@{k}"] = float(seen[k_index].float().mean()) if seen.shape[1] else 0.0
    if done < len(evalset):
        result["cancelled"] = True
    if per_user:
        result["per_user"] = _per_user_frame(columns, evalset, done, item_popularity)
    return result


def _per_user_frame(columns: dict[str, np.ndarray], evalset: EvalSet, done: int,
                    item_popularity: np.ndarray | None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "user": np.asarray(evalset.users[:done]),
        "history_len": np.fromiter((len(h) for h in evalset.histories[:done]), dtype=np.int64, count=done),
        "n_targets": np.fromiter((len(t) for t in evalset.targets[:done]), dtype=np.int64, count=done),
    })
    for key, values in columns.items():
        frame[key] = values.astype(np.int64) if key == "rank" else values
    if item_popularity is not None and done:
        flat = np.concatenate([np.asarray(t, dtype=np.int64).reshape(-1) for t in evalset.targets[:done]])
        rows = np.repeat(np.arange(done), frame["n_targets"].to_numpy())
        pop = np.asarray(item_popularity, dtype=np.float64)[flat]
        frame["target_popularity"] = np.bincount(rows, weights=pop, minlength=done) / frame["n_targets"].clip(lower=1)
    return frame
