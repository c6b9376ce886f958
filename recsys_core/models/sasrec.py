"""SASRec+ (Kang & McAuley 2018, with the full cross-entropy loss of Klenitskiy & Vasilev,
RecSys 2023): a causal transformer predicting the next item at every position. A [BOS] token
opens every sequence, so an empty history is scored from it and no attention row is ever empty.
Over a large catalogue it trains on a sampled softmax or gBCE instead (`loss`, see `losses.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.models.sequences import PAD, crop_rows, pad_right
from recsys_core.models.sequential import SequentialConfig, SequentialRecommender


@dataclass
class SASRecConfig(SequentialConfig):
    """SASRec+ reads SequentialConfig's settings as they are."""


class SASRec(SequentialRecommender):
    """Causal; positions count from the start of the window."""

    family = "sasrec"
    description = "SASRec+: causal transformer, next-item prediction with full (or sampled) cross-entropy"
    config_class = SASRecConfig
    causal = True
    positions_from_end = False

    def _context(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, lens = pad_right(flat, starts, lengths)
        out = np.zeros((len(lens), tokens.shape[1] + 1), dtype=np.int64)
        out[:, 0] = self.module_.special_token
        out[:, 1:] = tokens
        return out, lens + 1

    def _batch_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator,
                    rows: slice = slice(None)) -> torch.Tensor:
        # Input is [BOS, i1 .. i(L-1)], target [i1 .. iL]: every real position predicts its successor.
        total = lengths.sum()
        tokens, lengths = crop_rows(rows, tokens, lengths)
        bos = torch.full_like(tokens[:, :1], self.module_.special_token)
        inputs = torch.cat([bos, tokens[:, :-1]], dim=1)
        target = tokens != PAD
        user = self.module_.head(self._hidden(inputs, lengths)[target])
        return self._objective(user, tokens[target] - 1, rng) * (lengths.sum() / total)
