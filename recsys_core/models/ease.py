"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

Closed form: with G = XᵀX + λI and P = G⁻¹, the item-item weights are B = I - P·diag(1/diag(P)),
i.e. B_ij = -P_ij / P_jj off the diagonal and 0 on it. A history x scores every item as x·B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import psutil
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.errors import ModelError, ResourceError
from recsys_core.models.base import Recommender, Refusal
from recsys_core.models.histories import ItemMatrix, history_matrix, low_rank, training_matrix
from recsys_core.models.settings import Settings, search, setting
from recsys_core.progress import Progress


@dataclass
class EASEConfig(Settings):
    l2: float = setting(300.0, "Regularisation λ; 200-500 suits MovieLens, larger for denser data.", gt=0)
    max_items: int = setting(0, "Your own cap on the catalogue size (0 = none): without it, the memory this machine "
                                "has free decides (EASE holds ~3 dense n_items² matrices while fitting).", ge=0)
    dtype: str = setting("float64", "Precision of the matrix inversion; float32 halves its memory.",
                         choices=("float32", "float64"))
    embedding_dim: int = setting(64, "Rank of the truncated SVD behind item and user embeddings.", ge=1)
    use_counts: bool = setting(True, "When the data has counts (plays, clicks), weigh each interaction by "
                                     "log(1 + count).")
    search_space: ClassVar[dict] = {"l2": search(10.0, 10_000.0, log=True)}


# EASE holds about three dense n x n matrices at once (the Gram matrix, its inverse and the inversion's work, then
# the weights), and takes at most this share of the memory free when it starts, leaving the rest to everything else.
DENSE_MATRICES = 3
MEMORY_SHARE = 0.8


def memory_needed(n_items: int, dtype: str) -> int:
    """Bytes EASE's fit holds at its peak on a catalogue of `n_items`, in `dtype`."""
    return DENSE_MATRICES * n_items**2 * (8 if dtype == "float64" else 4)


def largest_catalogue(available: int, dtype: str) -> int:
    """The most items whose fit needs at most `MEMORY_SHARE` of `available` bytes."""
    return math.isqrt(int(available * MEMORY_SHARE) // memory_needed(1, dtype))


def memory_refusal(n_items: int, dtype: str, available: int) -> Refusal | None:
    """Why a fit on `n_items` in `dtype` does not fit in `available` free bytes, with what to do; None when it does."""
    if n_items <= largest_catalogue(available, dtype):
        return None
    gib = 2**30
    smaller = "" if dtype == "float32" or n_items > largest_catalogue(available, "float32") else \
        "set dtype to float32 (half the memory; it fits), or "
    return Refusal(f"EASE needs about {memory_needed(n_items, dtype) / gib:.1f} GiB for dense {n_items:,} x {n_items:,} "
                   f"item matrices in {dtype}, and this machine has {available / gib:.1f} GiB free (it fits up to "
                   f"{largest_catalogue(available, dtype):,} items)",
                   f"{smaller}drop rare items (Data page: raise the minimum interactions per item, a k-core filter) "
                   "to a smaller catalogue, or train item-kNN, which needs no dense item matrix", ResourceError)


def matrix_columns(matrix: ItemMatrix, items: np.ndarray) -> np.ndarray:
    """matrix[:, items] as float32 [n, len(items)], read block by block (never the whole matrix)."""
    out = np.empty((matrix.shape[0], len(items)), dtype=np.float32)
    block, col = np.divmod(items, ItemMatrix.WIDTH)
    for b in np.unique(block):  # at most n_items / WIDTH blocks, usually one per explained item
        where = np.flatnonzero(block == b)
        out[:, where] = matrix.blocks[b].numpy()[:, col[where]]
    return out


class EASE(Recommender):
    """Linear item-item autoencoder with a zero diagonal, solved in closed form."""

    family = "ease"
    description = "EASE: closed-form linear item-item autoencoder (strong baseline)"
    config_class = EASEConfig

    def __init__(self, config: EASEConfig | None = None) -> None:
        super().__init__(config)
        self._weights: ItemMatrix | None = None
        self._factors: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, dataset: Dataset, progress: Progress | None = None,
            split: Split | None = None) -> EASE:
        """Solve for B on the user x item matrix of `split.train` (all sequences without a split): binary, or
        log(1 + count) weighted when the data has counts."""
        if (refused := self.refusal(dataset)) is not None:
            raise refused.error()
        self._remember_catalogue(dataset)
        x = training_matrix(dataset, split, self.n_items_, self.config.use_counts)
        dtype = getattr(torch, self.config.dtype)
        gram = torch.from_numpy((x.T @ x).toarray()).to(dtype)
        if progress is not None:
            progress.update(1, 3, message="built item-item Gram matrix")
        gram.diagonal().add_(self.config.l2)
        # torch.linalg.inv (LU) measured ~10x faster on CPU than cholesky_inverse for this size.
        precision = torch.linalg.inv(gram)
        del gram
        if progress is not None:
            progress.update(2, 3, message="inverted Gram matrix")
        weights = precision / (-precision.diagonal()).unsqueeze(0)
        weights.diagonal().zero_()
        self._set_weights(weights.float().numpy())
        if progress is not None:
            progress.update(3, 3, message="EASE weights ready")
        return self

    def refusal(self, dataset: Dataset) -> Refusal | None:
        """Refused when the fit's dense matrices need more memory than this machine has free (or the catalogue is
        above the user's own `max_items`)."""
        n, cfg = dataset.n_items, self.config
        if (refused := super().refusal(dataset)) is not None:
            return refused
        if cfg.max_items and n > cfg.max_items:
            return Refusal(f"the catalogue has {n:,} items, above your cap max_items={cfg.max_items:,}",
                           "raise max_items (0 = no cap), drop rare items (Data page: minimum interactions per "
                           "item), or train item-kNN", ResourceError)
        return memory_refusal(n, cfg.dtype, psutil.virtual_memory().available)

    def training_memory(self, n_items: int) -> int:
        return memory_needed(n_items, self.config.dtype)

    def _set_weights(self, weights: np.ndarray) -> None:
        self._weights, self._factors = ItemMatrix(weights), None

    def weights(self) -> np.ndarray:
        """B, [n_items, n_items] float32: B[i, j] is how much having item i raises item j's score."""
        if self._weights is None:
            return np.zeros((self.n_items_, self.n_items_), dtype=np.float32)
        return self._weights.dense()

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """x·B for the binary vector x of each history."""
        x = history_matrix(histories, self.n_items_)
        if self._weights is None:
            return torch.zeros((x.shape[0], self.n_items_), dtype=torch.float32)
        return self._weights.left_multiply(x)

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        """x·B[:, items]: only the requested columns of B are read."""
        x = history_matrix(histories, self.n_items_)
        index = self._check_items(items)
        if self._weights is None:
            return torch.zeros((x.shape[0], len(index)), dtype=torch.float32)
        return ItemMatrix(matrix_columns(self._weights, index)).left_multiply(x)

    def _low_rank(self) -> tuple[np.ndarray, np.ndarray]:
        if self._factors is None:
            self._factors = low_rank(torch.from_numpy(self.weights()), self.config.embedding_dim)
        return self._factors

    def item_embeddings(self) -> np.ndarray:
        """[n_items, embedding_dim]: R of the truncated SVD B ~= L·Rᵀ (items as recommendation targets)."""
        return self._low_rank()[1]

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[n, embedding_dim]: x·L, so user . item approximates the EASE score."""
        return np.asarray(history_matrix(histories, self.n_items_) @ self._low_rank()[0], dtype=np.float32)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """B as its column blocks (`B.0`, `B.1`, ...), the layout scoring reads, so a loaded model maps them from
        the file as they are (format 3; before, one `B` that every load copied into blocks)."""
        if self._weights is None:
            return {"B": torch.from_numpy(self.weights())}
        return {f"B.{i}": block for i, block in enumerate(self._weights.blocks)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        n = self.n_items_
        if "B" in tensors:  # format <= 2, or a model never fitted
            weights = tensors["B"].float()
            if tuple(weights.shape) != (n, n):
                raise ModelError(f"EASE weights have shape {tuple(weights.shape)}, expected {n} x {n}",
                                hint="the artifact is damaged; retrain the model")
            self._set_weights(weights.numpy())
            return
        widths = [min(ItemMatrix.WIDTH, n - start) for start in range(0, n, ItemMatrix.WIDTH)]
        blocks = [tensors.get(f"B.{i}") for i in range(len(widths))]
        shapes = [None if b is None else tuple(b.shape) for b in blocks]
        if len(tensors) != len(widths) or shapes != [(n, w) for w in widths]:
            raise ModelError(f"EASE weight blocks {sorted(tensors)[:4]} have shapes {shapes[:4]}, expected "
                            f"{len(widths)} blocks of {n} x {ItemMatrix.WIDTH} columns",
                            hint="the artifact is damaged; retrain the model")
        self._weights, self._factors = ItemMatrix.from_blocks(blocks), None
