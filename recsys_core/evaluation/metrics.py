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
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import torch

from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.progress import Progress

if TYPE_CHECKING:  # evaluation ranks any scorer; models import it for validation
    from recsys_core.models.base import Recommender

KS = (5, 10, 20)
# Bytes of scores per evaluation batch (float32): large enough to amortise a model's per-call cost,
# small enough (32 MiB) that the allocator reuses the block instead of mapping fresh pages per batch
# (one thread, 1M rows/20k items: 220 vs 176 M cells/s with 256 MiB). The passes below work on
# cache-sized row chunks. On a busy shared box torch's second OpenMP thread stalls every chunk op at
# its barrier (same data: 26 M cells/s on 2 threads vs 300 on one); there, set_num_threads(1) pays.
_BATCH_BYTES = 2**25
# Cells per chunk in the comparison/top-k passes: ~1 MiB of bool or 4 MiB of float32 stays in
# cache; one 2048 x 20k compare measured 7x faster in such chunks than in one piece.
_CHUNK_CELLS = 2**20
# Up to this many targets per user, one comparison pass per target beats sorting every row (~10x for one).
_COMPARE_TARGETS = 16

Exclude = Sequence[np.ndarray] | torch.Tensor | None
Pairs = tuple[np.ndarray, np.ndarray]  # (rows, items), int64, sorted by row then item, no repeats


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


def _pairs(rows: Exclude, shape: tuple[int, int]) -> Pairs:
    """The (row, item) cells named by per-row index arrays (or a bool mask), deduplicated, in CSR order."""
    if rows is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if isinstance(rows, torch.Tensor):
        r, c = _mask_of(rows, shape).nonzero(as_tuple=True)
        return r.numpy().astype(np.int64), c.numpy().astype(np.int64)
    if len(rows) != shape[0]:
        raise ValueError(f"got {len(rows)} index arrays for {shape[0]} score rows")
    arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays) if len(arrays) else np.zeros(0, np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= shape[1]):
        raise DataError(f"item index outside the catalogue of {shape[1]} items in targets/exclusions")
    keys = np.unique(np.repeat(np.arange(len(arrays), dtype=np.int64), lengths) * shape[1] + flat)
    return keys // max(shape[1], 1), keys % max(shape[1], 1)


def _minus(cells: Pairs, other: Pairs, n_items: int) -> Pairs:
    """`cells` without those also in `other` (a history's items that are targets are never excluded)."""
    keep = ~np.isin(cells[0] * n_items + cells[1], other[0] * n_items + other[1], assume_unique=True)
    return cells[0][keep], cells[1][keep]


def _dense(cells: Pairs, shape: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.bool)
    out[torch.from_numpy(cells[0]), torch.from_numpy(cells[1])] = True
    return out


def _all_finite(scores: torch.Tensor) -> bool:
    # A plain sum is finite only if every score is (NaN and +-inf propagate): ~40x cheaper than
    # isfinite. A finite sum that overflows is rare and just takes the exact check.
    return bool(torch.isfinite(scores.sum())) or bool(torch.isfinite(scores).all())


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
        ids = np.sort(users[rows]) if users is not None else rows
        shown = ", ".join(str(int(i)) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise ModelError(f"{who} returned NaN or infinite scores for {len(rows)} user(s) (user indices {shown})",
                        hint="the model diverged or was saved mid-training: retrain it (e.g. lower the learning rate)")


def _ranking_scores(scores: torch.Tensor, excluded: Pairs, who: str = "the model",
                    users: np.ndarray | None = None) -> torch.Tensor:
    """Float scores ready to rank: all finite, except excluded items, which non-finite ones are set to -inf.

    A model may mask seen items itself with -inf (or leave NaN there); they are not ranked, so only
    on that rare path is a dense mask built. The model's tensor is never written to.
    """
    scores = scores if scores.is_floating_point() else scores.float()
    if _all_finite(scores):
        return scores
    mask = _dense(excluded, tuple(scores.shape))
    check_finite(scores, mask, who=who, users=users)
    return scores.masked_fill(mask, float("-inf"))


def _chunk_rows(n_items: int) -> int:
    return max(1, _CHUNK_CELLS // max(n_items, 1))


def _count_at_least(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[b, m] int64: how many items of each row score >= each of the row's `values` (the target itself included)."""
    b, n = scores.shape
    if values.shape[1] > _COMPARE_TARGETS:
        ascending = torch.sort(scores, dim=1).values
        return n - torch.searchsorted(ascending, values, side="left")
    out = torch.empty(values.shape, dtype=torch.int64)
    step = _chunk_rows(n)
    for start in range(0, b, step):  # row chunks: the bool temporaries stay in cache
        chunk, bounds = scores[start:start + step], values[start:start + step]
        for j in range(values.shape[1]):
            out[start:start + step, j] = (chunk >= bounds[:, j:j + 1]).sum(dim=1)
    return out


def _excluded_at_least(scores: torch.Tensor, excluded: Pairs, values: torch.Tensor) -> torch.Tensor:
    """[b, m] int64: how many excluded items of each row score >= each of the row's `values` (sparse)."""
    out = torch.zeros(values.shape, dtype=torch.int64)
    rows, items = torch.from_numpy(excluded[0]), torch.from_numpy(excluded[1])
    x = scores[rows, items]
    step = max(1, _CHUNK_CELLS // values.shape[1])
    for start in range(0, len(x), step):
        r = rows[start:start + step]
        out.index_add_(0, r, (x[start:start + step, None] >= values[r]).long())
    return out


def _ranks(scores: torch.Tensor, targets: Pairs, excluded: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 1-based ranks [b, m] of each user's targets, and which slots are real targets.

    Rank = 1 + non-excluded items scoring >= the target = items scoring >= it (dense pass, target
    included) minus excluded items scoring >= it (sparse pass over the history).
    """
    counts = torch.from_numpy(np.bincount(targets[0], minlength=scores.shape[0]))
    m = max(int(counts.max()) if len(counts) else 0, 1)
    rows, cols = torch.from_numpy(targets[0]), torch.from_numpy(targets[1])
    slot = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    values = torch.full((scores.shape[0], m), float("inf"), dtype=scores.dtype)
    values[rows, slot] = scores[rows, cols]
    ranks = _count_at_least(scores, values) - _excluded_at_least(scores, excluded, values)
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
    target_cells = _pairs(targets, shape)
    if len(targets) and len(np.unique(target_cells[0])) < shape[0]:
        raise DataError("every evaluated user needs at least one target item")
    excluded = _minus(_pairs(exclude, shape), target_cells, shape[1])
    ranks, valid = _ranks(_ranking_scores(scores, excluded), target_cells, excluded)
    return _metrics_from_ranks(ranks, valid, _check_ks(ks))


def top_k(scores: torch.Tensor, k: int, exclude: Exclude = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k items per row as (indices long [b, k], scores [b, k]), excluded items never returned.

    A row with fewer than k candidates is padded with index -1 and score -inf; a score of -inf
    counts as filtered out, NaN or +inf raises.
    """
    shape = tuple(scores.shape)
    scores = scores if scores.is_floating_point() else scores.float()
    if isinstance(exclude, torch.Tensor):  # a ready mask: one fill pass, as cheap as it gets
        masked = scores.masked_fill(_mask_of(exclude, shape), float("-inf"))
        if not _all_finite(scores):
            check_finite(masked, masked == float("-inf"))
        return _top_k_masked(masked, k)
    excluded = _pairs(exclude, shape)
    if not _all_finite(scores):
        masked = scores.masked_fill(_dense(excluded, shape), float("-inf"))
        check_finite(masked, masked == float("-inf"))
    return _top_k_excluding(scores, k, excluded)


def _mask_of(mask: torch.Tensor, shape: tuple) -> torch.Tensor:
    if tuple(mask.shape) != shape or mask.dtype != torch.bool:
        raise ValueError(f"exclude mask must be bool {shape}, got {mask.dtype} {tuple(mask.shape)}")
    return mask


def _top_k_masked(masked: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(masked, min(k, masked.shape[1]), dim=1)
    return indices.masked_fill(values == float("-inf"), -1), values


def _top_k_excluding(scores: torch.Tensor, k: int, excluded: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """`_top_k_masked` of the scores with excluded cells at -inf, masking a cache-sized copy of a few rows at a time."""
    scores = scores if scores.is_floating_point() else scores.float()
    b, n = scores.shape
    k = min(k, n)
    indices, values = torch.empty((b, k), dtype=torch.int64), torch.empty((b, k), dtype=scores.dtype)
    step = _chunk_rows(n)
    bounds = np.searchsorted(excluded[0], np.arange(0, b + step, step))  # cells are sorted by row
    for i, start in enumerate(range(0, b, step)):
        chunk = scores[start:start + step].clone()
        lo, hi = bounds[i], bounds[i + 1]
        chunk[torch.from_numpy(excluded[0][lo:hi] - start), torch.from_numpy(excluded[1][lo:hi])] = float("-inf")
        indices[start:start + step], values[start:start + step] = _top_k_masked(chunk, k)
    return indices, values


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"cut-offs K must be positive integers, got {list(ks)}")
    return ks


def sample_users(evalset: EvalSet, max_users: int | None, seed: int = 0) -> EvalSet:
    """At most `max_users` users of `evalset`, drawn without replacement (seeded), kept in their order."""
    if not max_users or len(evalset) <= max_users:
        return evalset
    keep = np.sort(np.random.default_rng(seed).choice(len(evalset), int(max_users), replace=False))
    return _subset(evalset, keep)


def _length_order(evalset: EvalSet, world: int = 1) -> np.ndarray:
    """Users by history length, longest first, so a batch pads its histories to similar lengths: a
    sequential model's batch of 512 random users padded to the longest cost 4.5x the CPU on the demo.
    Longest first: each batch's temporaries then fit in memory the previous batch freed, where batches
    growing steadily defeat the allocator (400k users x 500k items passed 20 GB shortest first).
    For `world` processes, contiguous shards of the order take every world-th user, so each process
    gets users of every length (the first shard would otherwise hold all the long histories)."""
    lengths = np.fromiter((len(h) for h in evalset.histories), np.int64, len(evalset))
    order = np.argsort(-lengths, kind="stable")
    return order[np.concatenate([np.arange(r, len(order), world) for r in range(world)])] if world > 1 else order


def _subset(evalset: EvalSet, keep: np.ndarray) -> EvalSet:
    return EvalSet(np.asarray(evalset.users)[keep], [evalset.histories[i] for i in keep],
                   [evalset.targets[i] for i in keep])


class Shards(Protocol):
    """How processes under torchrun split `evaluate`'s users (`models.distributed.Shards`): each scores
    rows `rows(n)` of the length-ordered users, then every process gets every process's rows and the
    union of their top-K items, so all of them return the whole result."""

    world: int

    def rows(self, n: int) -> slice: ...

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor: ...

    def union(self, seen: torch.Tensor) -> torch.Tensor: ...


def evaluate(model: Recommender, evalset: EvalSet, ks: Sequence[int] = KS, item_popularity: np.ndarray | None = None,
             batch_size: int | None = None, progress: Progress | None = None, per_user: bool = False,
             max_users: int | None = None, seed: int = 0, shards: Shards | None = None) -> dict:
    """Mean full-ranking metrics of `model` on `evalset`.

    Keys: "users", and per K: "hr@K", "recall@K", "ndcg@K", "mrr@K", "coverage@K" (fraction of the
    catalogue in anyone's top K) and, given training `item_popularity`, "pop_bias@K" (mean
    popularity percentile of recommended items, 0.5 = unbiased). With `per_user`, "per_user" is a
    DataFrame (one row per evaluated user: user, history_len, n_targets, rank, metrics,
    target_popularity) for breakdowns. A cancelled `progress` stops early: "cancelled" is then True
    and the means cover the users done. With `max_users` (e.g. for validation) a seeded sample of
    that many users is evaluated: "users" is the sample size and "sampled_from" the full count.
    `batch_size` caps the users scored per model call (default: as many as ~32 MiB of scores). With
    `shards` (torchrun), each process scores its share of the users and all return the same whole result.
    """
    ks = _check_ks(ks)
    n_items = model.n_items_
    pct = None
    if item_popularity is not None:
        if len(item_popularity) != n_items:
            raise DataError(f"item_popularity has {len(item_popularity)} entries for {n_items} items",
                            hint="pass the popularity of the catalogue the model was trained on")
        pct = torch.from_numpy(popularity_percentile(item_popularity))
    population = len(evalset)
    evalset = sample_users(evalset, max_users, seed)
    if shards is not None and len(evalset) < shards.world:
        shards = None  # fewer users than processes: each scores them all
    order = _length_order(evalset, shards.world if shards is not None else 1)
    evalset = _subset(evalset, order)
    mine = shards.rows(len(evalset)) if shards is not None else slice(0, len(evalset))
    batch = max(1, min(int(batch_size or len(evalset) or 1), _BATCH_BYTES // 4 // max(n_items, 1)))
    parts: list[dict[str, torch.Tensor]] = []
    seen = torch.zeros((len(ks), n_items), dtype=torch.bool)
    total, done = len(evalset), mine.start
    for start in range(mine.start, mine.stop, batch):
        stop = min(mine.stop, start + batch)
        parts.append(_evaluate_batch(model, evalset, start, stop, ks, pct, seen))
        done = stop
        if progress is not None:
            progress.update(done - mine.start, mine.stop - mine.start, message="evaluating")
            if progress.cancelled and shards is None:  # processes stop together or not at all
                break
    if shards is not None:
        parts, seen, done = _gathered(parts, shards, total), shards.union(seen), total
    result = _summarise(parts, evalset, done, ks, seen, item_popularity, per_user)
    if per_user and done == len(order):  # back in the caller's order (a cancelled run lists the users it did)
        result["per_user"] = result["per_user"].iloc[np.argsort(order)].reset_index(drop=True)
    if len(evalset) < population:
        result["sampled_from"] = population
    return result


def _gathered(parts: list[dict[str, torch.Tensor]], shards: Shards, total: int) -> list[dict[str, torch.Tensor]]:
    """Every process's per-user columns, in the order of `evalset` (one part holding them all)."""
    return [{key: shards.gather(torch.cat([p[key] for p in parts]), total) for key in parts[0]}]


def _evaluate_batch(model: Recommender, evalset: EvalSet, start: int, stop: int, ks: list[int],
                    pct: torch.Tensor | None, seen: torch.Tensor) -> dict[str, torch.Tensor]:
    histories, targets = evalset.histories[start:stop], evalset.targets[start:stop]
    scores = model.score(histories)
    shape = (stop - start, model.n_items_)
    if tuple(scores.shape) != shape:
        raise ModelError(f"model '{model.family}' returned scores of shape {tuple(scores.shape)}, expected {shape}")
    target_cells = _pairs(targets, shape)
    if len(np.unique(target_cells[0])) < shape[0]:
        raise DataError("every evaluated user needs at least one target item")
    excluded = _minus(_pairs(histories, shape), target_cells, shape[1])
    scores = _ranking_scores(scores, excluded, who=f"model '{model.family}'",
                             users=np.asarray(evalset.users[start:stop]))
    out = _metrics_from_ranks(*_ranks(scores, target_cells, excluded), ks)
    top, _ = _top_k_excluding(scores, ks[-1], excluded)
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
