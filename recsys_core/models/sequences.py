"""Sequence data for the sequential transformers: training windows over time-ordered histories, their padded
batches (shuffled, or length-bucketed), and free-form histories as the token rows a model reads.

Token ids: 0 = padding, 1..n_items = item index + 1 (the families add their own special token after the
catalogue). Sequences are left-aligned (padding on the right), so position 0 is always a real token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsys_core.models import loop
from recsys_core.models.histories import flatten

PAD = 0
# Padded tokens per scoring chunk. A chunk pads its histories to its longest one, so chunks are cut by
# rows x padded length, not by rows alone: 1,000 demo validation users cost 0.48 CPU s in two row-count
# chunks (the first padded to max_len) and 0.16 in token-budget chunks; 4,333 users 0.85 -> 0.63 (SASRec+,
# 2 threads, idle). 1k-16k tokens measured; 4k was fastest for both models.
SCORE_CHUNK_TOKENS = 4096


class SequenceWindows:
    """Training examples: the most recent `max_len` items of each history, plus (with `crops`) earlier crops of
    longer histories every `stride` items. Stored as (start, length) into one flat token array."""

    def __init__(self, seqs: Sequence[np.ndarray], max_len: int, stride: int, crops: bool = True) -> None:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        self.tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs] or [np.zeros(0, np.int64)]) + 1
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        extra = np.where(crops & (lengths > max_len), np.ceil((lengths - max_len) / stride), 0).astype(np.int64)
        per_seq = (lengths > 0).astype(np.int64) + extra
        owner = np.repeat(np.arange(len(seqs)), per_seq)
        k = np.arange(per_seq.sum()) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq)
        end = np.maximum(lengths[owner] - k * stride, np.minimum(lengths[owner], max_len))
        begin = np.maximum(0, end - max_len)
        self.start = offsets[owner] + begin
        self.length = end - begin

    def __len__(self) -> int:
        return len(self.start)

    def batches(self, batch_size: int, rng: np.random.Generator, by_length: bool = False) -> list[np.ndarray]:
        """Batches in random order. by_length: length-bucketed, so each batch pads only to its own longest;
        otherwise a plain shuffle, so every batch mixes short and long sequences."""
        if not by_length:
            order = rng.permutation(len(self))
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        order = np.lexsort((rng.random(len(self)), self.length))
        out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def padded(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token matrix [B, longest] (right padding) and lengths for windows `idx`."""
        return pad_right(self.tokens, self.start[idx], self.length[idx])


def mixed_batch_widths(lengths: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The padded widths a shuffled batch of `batch` windows takes, and how many rows pad to each: a mixed batch
    pads to its longest window, which is width w or less with probability F(w)^batch (F: the share of windows no
    longer than w, drawn as if with replacement). Rows in all: len(lengths)."""
    widths, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    at_most = (np.cumsum(counts) / max(1, len(lengths))) ** max(1, batch)
    return widths, np.diff(at_most, prepend=0.0) * len(lengths)


def crop_rows(rows: slice, tokens: torch.Tensor, lengths: torch.Tensor, *more: torch.Tensor
              ) -> tuple[torch.Tensor, ...]:
    """Rows `rows` of a right-padded batch (and of same-shaped `more`), cut to their own longest length."""
    lengths = lengths[rows]
    width = int(lengths.max()) if len(lengths) else 0
    return (tokens[rows, :width], lengths, *(m[rows, :width] for m in more))


def padded_widths(lengths: np.ndarray, batch: int, max_rows: int, max_tokens: int = SCORE_CHUNK_TOKENS) -> np.ndarray:
    """The padded width of each row (in no particular order) when histories of `lengths` come longest
    first in batches of `batch`, as `evaluate` sends them, and each batch is cut as `_map_chunks` cuts it."""
    ordered = np.sort(lengths)[::-1]
    widths = []
    for b in range(0, len(ordered), batch):
        part, done = np.sort(ordered[b:b + batch]), 0
        while done < len(part):
            end = loop.chunk_end(part, done, max_rows, max_tokens)
            widths.append(np.full(end - done, part[end - 1]))
            done = end
    return np.concatenate(widths) if widths else np.zeros(0, np.int64)


def pad_right(flat: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = int(length.max()) if len(length) else 0
    cols = np.arange(width)
    valid = cols[None, :] < length[:, None]
    gathered = flat[np.where(valid, start[:, None] + cols[None, :], 0)] if len(flat) else np.zeros(valid.shape, np.int64)
    return np.where(valid, gathered, PAD), length


def histories_to_tokens(histories: Sequence[np.ndarray], keep: int, n_items: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-form item-index histories -> (flat tokens, starts, lengths) of their last `keep` items."""
    lengths, flat = flatten(histories, n_items)
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, max(keep, 0))
    return flat + 1, (ends - kept).astype(np.int64), kept


