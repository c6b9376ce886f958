"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer over item sequences trained by
Cloze (masked-item) prediction with a full softmax over the catalogue (over a large one, a sampled
softmax or gBCE: `loss`, see `losses.py`); a user is scored by appending [MASK] to their history and
reading the prediction there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.errors import ConfigError
from recsys_core.models.sequential import PAD, SequentialConfig, SequentialRecommender, crop_rows, pad_right
from recsys_core.models.settings import setting


@dataclass
class BERT4RecConfig(SequentialConfig):
    # 0.4 beat 0.2 on ML-100k validation
    mask_prob: float = setting(0.4, "Share of a training sequence's items replaced by [MASK].")
    mask_last_prob: float = setting(0.1, "Share of sequences whose last item is masked too (the scoring case).")


class BERT4Rec(SequentialRecommender):
    """Bidirectional; positions count back from the newest item, so [MASK] at scoring time sits
    where the newest item sat in training."""

    family = "bert4rec"
    description = "BERT4Rec: bidirectional transformer trained by masked-item prediction"
    config_class = BERT4RecConfig
    causal = False
    positions_from_end = True

    def _target_positions(self) -> float:
        return self.config.mask_prob * self.config.max_len + 1

    def _context(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, lens = pad_right(flat, starts, lengths)
        out = np.zeros((len(lens), tokens.shape[1] + 1), dtype=np.int64)
        out[:, :-1] = tokens
        out[np.arange(len(lens)), lens] = self.module_.special_token
        return out, lens + 1

    def _batch_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator,
                    rows: slice = slice(None)) -> torch.Tensor:
        masked = self._cloze_masks(tokens, lengths, rng)  # drawn for the whole batch: see `rows`
        total = masked.sum()
        tokens, lengths, masked = crop_rows(rows, tokens, lengths, masked)
        hidden = self._hidden(tokens.masked_fill(masked, self.module_.special_token), lengths)
        loss = self._objective(self.module_.head(hidden[masked]), tokens[masked] - 1, rng)
        return loss * (masked.sum() / total)

    def _cloze_masks(self, tokens: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config
        if not 0 < cfg.mask_prob < 1:
            raise ConfigError(f"mask_prob={cfg.mask_prob} must lie strictly between 0 and 1", column="mask_prob")
        device = tokens.device
        n, width = tokens.shape
        masked = torch.from_numpy(rng.random((n, width)) < cfg.mask_prob).to(device) & (tokens != PAD)
        last = torch.arange(width, device=device)[None, :] == (lengths - 1)[:, None]
        # Cloze masks see both neighbours; scoring sees only the left one. Masking the last item as
        # well in some sequences trains that case without giving up the Cloze signal.
        also_last = torch.from_numpy(rng.random(n) < cfg.mask_last_prob).to(device)[:, None]
        return masked | (last & (also_last | ~masked.any(dim=1, keepdim=True)))  # every sequence teaches something
