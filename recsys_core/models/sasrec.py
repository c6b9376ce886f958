"""SASRec+ (Kang & McAuley 2018, with the full cross-entropy loss of Klenitskiy & Vasilev,
RecSys 2023): a causal transformer predicting the next item at every position. A [BOS] token
opens every sequence, so an empty history is scored from it and no attention row is ever empty.
Over a large catalogue it trains on a sampled softmax or gBCE instead (`loss`, see `losses.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from recsys_core.models.sequences import PAD, crop_rows, pad_right
from recsys_core.models.sequential import SequentialConfig, SequentialRecommender
from recsys_core.models.settings import search_choices, setting


@dataclass
class SASRecConfig(SequentialConfig):
    """SequentialConfig's settings, plus where SASRec+'s positions count from."""

    # RecTools pads on the left, so its learned positions count back from the latest item, which then always sits
    # at the same position; ours count from the window's start unless this says otherwise (issue 23).
    positions: str = setting("from_start", "Position ids count from the window's first item (from_start) or back "
                                           "from the latest one (from_end, as RecTools' left padding does).",
                             choices=("from_start", "from_end"))
    search_space: ClassVar[dict] = {**SequentialConfig.search_space,
                                    "positions": search_choices("from_start", "from_end")}


class SASRec(SequentialRecommender):
    """Causal; positions count from the start of the window, or back from its latest item (`positions`)."""

    family = "sasrec"
    description = "SASRec+: causal transformer, next-item prediction with full (or sampled) cross-entropy"
    config_class = SASRecConfig
    causal = True

    @property
    def positions_from_end(self) -> bool:  # a setting here; BERT4Rec always counts from the end
        return self.config.positions == "from_end"

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
