"""The network of the sequential transformers: item embeddings fed to a `transformers` BertModel
(bidirectional or causal), an optional head, and an output layer tied to the item embeddings; plus the
SVD start of the item table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sps
import torch
from sklearn.utils.extmath import randomized_svd
from torch import nn
from transformers import BertConfig, BertModel
from transformers.modeling_outputs import BaseModelOutput

from recsys_core.models.sequences import PAD

if TYPE_CHECKING:  # the config lives with the face, which imports this module
    from recsys_core.models.sequential import SequentialConfig


class SequenceEncoder(nn.Module):
    """Item embeddings -> BertModel (bidirectional or causal) -> optional head; output tied to the
    item embeddings, computed only for the rows a caller asks for."""

    def __init__(self, n_items: int, cfg: SequentialConfig, causal: bool) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 2, cfg.hidden, padding_idx=PAD)
        # BERT's 0.02 init suits hidden=768; at hidden=64 it makes attention's value x output
        # projections ~40x weaker than a variance-preserving init, and training then sits on a
        # popularity plateau for hundreds of steps (sometimes for good) before attention kicks in.
        std = cfg.init_std or cfg.hidden ** -0.5
        nn.init.trunc_normal_(self.item_emb.weight, std=std, a=-2 * std, b=2 * std)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()
        bert_cfg = BertConfig(
            vocab_size=1, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=4 * cfg.hidden, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attn_dropout, max_position_embeddings=cfg.max_len, type_vocab_size=1,
            pad_token_id=PAD, is_decoder=causal, use_cache=False, attn_implementation="sdpa", initializer_range=std,
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False) if cfg.block == "bert" else PreNormStack(cfg, causal, std)
        h = cfg.hidden
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h)) if cfg.head_transform else nn.Identity()
        self.bias = nn.Parameter(torch.zeros(n_items)) if cfg.output_bias else None

    @property
    def special_token(self) -> int:
        return self.n_items + 1

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, H] (padding positions are computed but meaningless)."""
        out = self.bert(inputs_embeds=self.item_emb(tokens), attention_mask=(tokens != PAD).long(),
                        position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight[1:self.n_items + 1]

    def logits(self, user: torch.Tensor) -> torch.Tensor:
        """Full-catalogue scores for rows of `user` vectors (already through the head)."""
        out = user @ self.item_weights().T
        return out + self.bias if self.bias is not None else out


class PreNormLayer(nn.Module):
    """SASRec's own block as RecTools builds it: LayerNorm on the query only, whose normed value is also the
    attention's residual; a ReLU feed-forward of width `hidden` on a LayerNorm of that, dropout after it, and the
    normed input as its residual."""

    def __init__(self, hidden: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, attn_dropout, batch_first=True)
        self.q_norm, self.ff_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ff_in, self.ff_out = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.ff_dropout, self.dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor | None, padding: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(x)
        attended, _ = self.attn(q, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=False)
        x = q + attended
        f = self.ff_norm(x)
        return f + self.dropout(self.ff_out(self.ff_dropout(torch.relu(self.ff_in(f)))))


class LiGRLayer(nn.Module):
    """eSASRec's block (LinkedIn's LiGR, as RecTools builds it): LayerNorm before attention and before a SwiGLU
    feed-forward of width 4 x hidden without biases, each added to the residual through a sigmoid gate computed
    from the un-normed input, so a layer can learn to pass its input through untouched."""

    def __init__(self, hidden: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, attn_dropout, batch_first=True)
        self.attn_norm, self.ff_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn_gate, self.ff_gate = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.ff_in, self.ff_up = nn.Linear(hidden, 4 * hidden, bias=False), nn.Linear(hidden, 4 * hidden, bias=False)
        self.ff_out = nn.Linear(4 * hidden, hidden, bias=False)
        self.ff_dropout, self.attn_out_dropout, self.dropout = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, causal: torch.Tensor | None, padding: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        attended, _ = self.attn(q, q, q, attn_mask=causal, key_padding_mask=padding, need_weights=False)
        x = x + torch.sigmoid(self.attn_gate(x)) * self.attn_out_dropout(attended)
        f = self.ff_norm(x)
        swiglu = nn.functional.silu(self.ff_in(f)) * self.ff_up(f)
        return x + torch.sigmoid(self.ff_gate(x)) * self.dropout(self.ff_out(self.ff_dropout(swiglu)))


LAYERS = {"pre_norm": PreNormLayer, "ligr": LiGRLayer}
# Multiply-adds per token per layer, in units of hidden^2 (the validation planner's prices): attention's four
# projections (4) plus the feed-forward, BERT's 4x-wide GELU (8), SASRec's 1x-wide ReLU (2), or LiGR's two gates (2)
# and 4x-wide SwiGLU (12). Kept beside the blocks, so a new block gets its price where it is built.
BLOCK_WEIGHTS = {"bert": 12, "pre_norm": 6, "ligr": 18}


class PreNormStack(nn.Module):
    """The peers' transformers (`block="pre_norm"` or `"ligr"`): learned positions added to the item embeddings,
    dropout, padding positions zeroed before every layer and after the last, then (pre_norm only: RecTools' LiGR
    stack has none) a final LayerNorm. Called as `BertModel` is, so every encoder (the hybrid's too) reads any
    stack the same way."""

    def __init__(self, cfg: SequentialConfig, causal: bool, std: float) -> None:
        super().__init__()
        self.causal = causal
        self.position = nn.Embedding(cfg.max_len, cfg.hidden)
        nn.init.trunc_normal_(self.position.weight, std=std, a=-2 * std, b=2 * std)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(LAYERS[cfg.block](cfg.hidden, cfg.heads, cfg.dropout, cfg.attn_dropout)
                                    for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=1e-8) if cfg.block == "pre_norm" else nn.Identity()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                use_cache: bool = False) -> BaseModelOutput:
        keep = attention_mask.bool().unsqueeze(-1)
        width = inputs_embeds.shape[1]
        causal = (torch.ones(width, width, dtype=torch.bool, device=inputs_embeds.device).triu(1)
                  if self.causal else None)  # True: may not attend
        x = self.dropout(inputs_embeds + self.position(position_ids))
        for layer in self.layers:
            x = layer(x * keep, causal, ~attention_mask.bool())
        return BaseModelOutput(last_hidden_state=self.final_norm(x * keep))


def init_items_from_svd(table: nn.Embedding, seqs: Sequence[np.ndarray], n_items: int, seed: int) -> None:
    """Start item rows (1..n_items) from a truncated SVD of the binary user x item matrix, columns
    scaled by 1/sqrt(popularity) so the top factor is not just popularity, at the table's init scale.

    Why: from random item vectors, the average over a history carries almost no signal, so the
    models first learn popularity and sit on that plateau for hundreds of steps (one seed of
    BERT4Rec on ML-100k never left it in 20 epochs). Co-occurrence factors make the history
    informative from step one; training then reshapes them freely.
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if lengths.sum() == 0:
        return
    rows = np.repeat(np.arange(len(seqs)), lengths)
    x = sps.csr_matrix((np.ones(int(lengths.sum()), np.float32), (rows, np.concatenate(seqs))),
                       shape=(len(seqs), n_items))
    x.data[:] = 1.0  # a repeated item counts once
    popularity = np.asarray(x.sum(axis=0)).ravel()
    x = x @ sps.diags((1.0 / np.sqrt(np.maximum(popularity, 1.0))).astype(np.float32))
    dim = table.weight.shape[1]
    k = min(dim, min(x.shape) - 1)
    if k < 1:
        return
    _, sigma, vt = randomized_svd(x, k, random_state=seed)
    factors = vt.T * np.sqrt(sigma)
    with torch.no_grad():
        weight = table.weight[1:n_items + 1]
        std = float(weight.std())
        weight[:, :k] = torch.from_numpy(factors / max(factors.std(), 1e-12) * std).to(weight.dtype)


