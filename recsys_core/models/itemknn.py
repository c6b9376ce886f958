"""Item-based k-nearest-neighbours on the binary user x item matrix.

sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i|·sqrt|U_j| + shrink): cosine similarity of the items' user
sets, shrunk towards 0 when few users support it. Each target item j keeps its `k` most similar
items as neighbours; a history scores j with the summed similarity of the neighbours it contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.errors import ConfigError, ModelError
from recsys_core.models.base import Capabilities, Recommender
from recsys_core.models.ease import matrix_columns
from recsys_core.models.histories import ItemMatrix, history_matrix, low_rank, training_matrix
from recsys_core.models.settings import setting
from recsys_core.progress import Progress

# Rows of the co-occurrence matrix densified at once while picking neighbours: bounds that step
# to about 64 MiB whatever the catalogue size.
_CHUNK_CELLS = 2**24
# Bytes per co-occurrence cell of a block while it is sparse (float32 value + int32 column, plus
# scipy's int64 row accounting slack), and the dense step's working set (a chunk and ~4 temporaries).
_SPARSE_CELL_BYTES = 12
_DENSE_STEP_BYTES = 5 * 4 * _CHUNK_CELLS
# Catalogues up to this size score through a dense copy of W (<= 256 MiB): much faster than a
# sparse-sparse product, which larger catalogues fall back to.
_DENSE_ITEMS = 8192


@dataclass
class ItemKNNConfig:
    k: int = setting(100, "Neighbours kept per item.")
    shrink: float = setting(10.0, "Added to the cosine denominator; damps similarities from few co-users.")
    recency_half_life: float = setting(0.0, "Above 0, a history item's weight halves every this many later items "
                                            "(scoring only; needs real timestamps).")
    embedding_dim: int = setting(64, "Rank of the truncated SVD behind item and user embeddings.")
    memory_budget_mb: int = setting(2048, "Working memory (MB) for item co-occurrences while fitting; "
                                          "larger catalogues take more, smaller blocks.")
    use_counts: bool = setting(True, "When the data has counts (plays, clicks), weigh each interaction by "
                                     "log(1 + count) in the co-occurrences.")


def _top_neighbours(cooc: sp.csr_matrix, norms: np.ndarray, shrink: float, k: int, start: int,
                    stop: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each [stop - start, k], of the k most similar items to items start..stop-1.

    `cooc` holds the co-occurrence rows of items offset..offset+len(cooc)-1 (rows = columns: it is symmetric).
    """
    block = torch.from_numpy(cooc[start - offset:stop - offset].toarray())
    denom = torch.from_numpy(np.outer(norms[start:stop], norms) + shrink)
    block = torch.where(denom > 0, block / denom.clamp_min(1e-12), torch.zeros(()))
    block[torch.arange(stop - start), torch.arange(start, stop)] = 0.0  # an item is not its own neighbour
    values, indices = torch.topk(block, k, dim=1)
    return values.numpy(), indices.numpy()


def block_rows(n_items: int, budget_mb: float) -> int:
    """Target items per co-occurrence block so one block fits `budget_mb`: a multiple of the dense
    step's rows (so each top-k sees exactly the rows an unblocked fit would), at least one step."""
    step = max(1, _CHUNK_CELLS // max(n_items, 1))
    free = budget_mb * 2**20 - _DENSE_STEP_BYTES
    rows = int(free // (_SPARSE_CELL_BYTES * max(n_items, 1)))
    return max(step, rows // step * step)


class ItemKNN(Recommender):
    """Scores = history vector x W, W the pruned item-item cosine similarity."""

    family = "itemknn"
    description = "Item-kNN: cosine item similarity with shrinkage (baseline)"
    config_class = ItemKNNConfig

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        super().__init__(config)
        self.neighbors_ = torch.zeros((0, 0), dtype=torch.int32)  # [n_items, k]: neighbours of target j
        self.similarities_ = torch.zeros((0, 0), dtype=torch.float32)  # [n_items, k]
        self._w: sp.csr_matrix | None = None
        self._dense: ItemMatrix | None = None
        self._factors: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, dataset: Dataset, progress: Progress | None = None,
            split: Split | None = None) -> ItemKNN:
        """Compute every item's k nearest neighbours on `split.train` (all sequences without a split)."""
        cfg = self.config
        if cfg.k < 1 or cfg.shrink < 0 or cfg.recency_half_life < 0 or cfg.memory_budget_mb <= 0:
            raise ConfigError(f"itemknn needs k >= 1, shrink >= 0, recency_half_life >= 0, memory_budget_mb > 0; "
                            f"got k={cfg.k}, shrink={cfg.shrink}, recency_half_life={cfg.recency_half_life}, "
                            f"memory_budget_mb={cfg.memory_budget_mb}")
        self._remember_catalogue(dataset)
        x = training_matrix(dataset, split, self.n_items_, cfg.use_counts)
        xt = x.T.tocsr()  # item x user: a block's rows are a cheap contiguous slice
        # Diagonal of XᵀX without forming it: each item's distinct users (x is binary).
        norms = np.sqrt(np.diff(xt.indptr).astype(np.float32))
        n, k = self.n_items_, min(cfg.k, max(self.n_items_ - 1, 1))
        neighbors = np.zeros((n, k), dtype=np.int32)
        sims = np.zeros((n, k), dtype=np.float32)
        self._fill_neighbours(x, xt, norms, neighbors, sims, progress)
        self.neighbors_, self.similarities_ = torch.from_numpy(neighbors), torch.from_numpy(sims)
        self._build_w()
        return self

    def _fill_neighbours(self, x: sp.csr_matrix, xt: sp.csr_matrix, norms: np.ndarray, neighbors: np.ndarray,
                         sims: np.ndarray, progress: Progress | None) -> None:
        """Neighbours block by block: a block's co-occurrence rows (Xᵀ X[:, block], sparse) live only while
        its items pick their top k, so memory follows the budget, not the catalogue."""
        cfg, (n, k) = self.config, neighbors.shape
        rows, step = block_rows(n, cfg.memory_budget_mb), max(1, _CHUNK_CELLS // max(n, 1))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            cooc = (xt[start:stop] @ x).tocsr()
            for lo in range(start, stop, step):
                hi = min(stop, lo + step)
                sims[lo:hi], neighbors[lo:hi] = _top_neighbours(cooc, norms, cfg.shrink, k, lo, hi, offset=start)
            del cooc
            if progress is not None:
                progress.update(stop, n, message=f"item neighbours: block {start // rows + 1} of {-(-n // rows)}")
                if progress.cancelled:  # items not reached keep no neighbours (score 0), like a partial run
                    return

    def _build_w(self) -> None:
        n, k = self.neighbors_.shape
        cols = np.repeat(np.arange(n, dtype=np.int64), k)
        w = sp.csr_matrix((self.similarities_.numpy().ravel(), (self.neighbors_.numpy().ravel().astype(np.int64), cols)),
                          shape=(self.n_items_, self.n_items_))
        w.eliminate_zeros()
        self._w, self._factors = w, None
        self._dense = ItemMatrix(w.toarray()) if self.n_items_ <= _DENSE_ITEMS else None

    def similarity(self) -> sp.csr_matrix:
        """W, [n_items, n_items]: W[i, j] = sim(i, j) when i is one of j's k neighbours, else 0."""
        if self._w is None:
            return sp.csr_matrix((self.n_items_, self.n_items_), dtype=np.float32)
        return self._w

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """x·W for the (optionally recency-weighted) binary vector x of each history."""
        x = history_matrix(histories, self.n_items_, self.config.recency_half_life)
        if self._dense is not None:
            return self._dense.left_multiply(x)
        return torch.from_numpy(np.asarray((x @ self.similarity()).toarray(), dtype=np.float32))

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        """x·W[:, items]: only the requested columns of W (each target's k neighbours) are read."""
        x = history_matrix(histories, self.n_items_, self.config.recency_half_life)
        index = self._check_items(items)
        if self._dense is not None:
            return ItemMatrix(matrix_columns(self._dense, index)).left_multiply(x)
        return torch.from_numpy(np.asarray((x @ self._columns(index)).toarray(), dtype=np.float32))

    def _columns(self, index: np.ndarray) -> sp.csr_matrix:
        """W[:, index] straight from the neighbour lists (column j of W holds target j's neighbours)."""
        k = self.neighbors_.shape[1] if self.neighbors_.ndim == 2 else 0
        rows = self.neighbors_.numpy()[index].ravel().astype(np.int64)
        cols = np.repeat(np.arange(len(index), dtype=np.int64), k)
        w = sp.csr_matrix((self.similarities_.numpy()[index].ravel(), (rows, cols)), shape=(self.n_items_, len(index)))
        w.eliminate_zeros()
        return w

    def _low_rank(self) -> tuple[np.ndarray, np.ndarray]:
        if self._factors is None:
            self._factors = low_rank(self.similarity(), self.config.embedding_dim)
        return self._factors

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(order_aware=self.config.recency_half_life > 0)

    def item_embeddings(self) -> np.ndarray:
        """[n_items, embedding_dim]: R of the truncated SVD W ~= L·Rᵀ (items as recommendation targets)."""
        return self._low_rank()[1]

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[n, embedding_dim]: x·L, so user . item approximates the item-kNN score."""
        x = history_matrix(histories, self.n_items_, self.config.recency_half_life)
        return np.asarray(x @ self._low_rank()[0], dtype=np.float32)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"neighbors": self.neighbors_, "similarities": self.similarities_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        neighbors, sims = tensors["neighbors"].to(torch.int32), tensors["similarities"].float()
        if neighbors.shape != sims.shape or neighbors.shape[0] != self.n_items_ or (
                neighbors.numel() and (int(neighbors.min()) < 0 or int(neighbors.max()) >= self.n_items_)):
            raise ModelError("item-kNN neighbour tensors do not match the catalogue",
                            hint="the artifact is damaged; retrain the model")
        self.neighbors_, self.similarities_ = neighbors, sims
        self._build_w()
