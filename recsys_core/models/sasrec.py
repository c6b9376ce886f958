"""SASRec+ (Kang & McAuley 2018, with the full cross-entropy loss of Klenitskiy & Vasilev,
RecSys 2023): a causal transformer predicting the next item at every position. A [BOS] token
opens every sequence, so an empty history is scored from it and no attention row is ever empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recsys_core.errors import ConfigError
from recsys_core.models.sequential import PAD, SequentialConfig, SequentialRecommender, full_softmax_loss, pad_right
from recsys_core.models.settings import setting


@dataclass
class SASRecConfig(SequentialConfig):
    loss: str = setting("ce", "ce: softmax over the whole catalogue; sampled: over n_negatives shared random items.")
    n_negatives: int = setting(1024, "Random negative items per batch when loss is sampled.")


class SASRec(SequentialRecommender):
    """Causal; positions count from the start of the window."""

    family = "sasrec"
    description = "SASRec+: causal transformer, next-item prediction with full cross-entropy"
    config_class = SASRecConfig
    causal = True
    positions_from_end = False
    sampled_loss = True

    def _output_positions(self, n_items: int) -> float:
        cfg = self.config
        if cfg.loss == "sampled":
            return cfg.max_len * min(1.0, (cfg.n_negatives + 1) / max(1, n_items))
        return float(cfg.max_len)

    def _context(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, lens = pad_right(flat, starts, lengths)
        out = np.zeros((len(lens), tokens.shape[1] + 1), dtype=np.int64)
        out[:, 0] = self.module_.special_token
        out[:, 1:] = tokens
        return out, lens + 1

    def _batch_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        # Input is [BOS, i1 .. i(L-1)], target [i1 .. iL]: every real position predicts its successor.
        bos = torch.full_like(tokens[:, :1], self.module_.special_token)
        inputs = torch.cat([bos, tokens[:, :-1]], dim=1)
        target = tokens != PAD
        user = self.module_.head(self._hidden(inputs, lengths)[target])
        labels = tokens[target] - 1
        if self.config.loss == "ce":
            return full_softmax_loss(user, labels, self.module_)
        if self.config.loss == "sampled":
            return self._sampled_loss(user, labels, rng)
        raise ConfigError(f"unknown loss {self.config.loss!r}", column="loss", hint='use "ce" or "sampled"')

    def _sampled_loss(self, user: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Softmax over the positive and uniformly sampled negatives shared by the batch; a negative
        that happens to be the positive is masked out. Uniform sampling needs no logQ correction."""
        module = self.module_
        negatives = torch.from_numpy(rng.integers(0, self.n_items_, self.config.n_negatives)).to(user.device)
        weights = module.item_weights()
        pos = (user * weights[labels]).sum(-1, keepdim=True)
        neg = user @ weights[negatives].T
        if module.bias is not None:
            pos, neg = pos + module.bias[labels][:, None], neg + module.bias[negatives][None, :]
        neg = neg.masked_fill(negatives[None, :] == labels[:, None], float("-inf"))
        logits = torch.cat([pos, neg], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=user.device))
