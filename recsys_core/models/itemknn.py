"""Item-based k-nearest-neighbours on the binary user x item matrix.

sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i|·sqrt|U_j| + shrink): cosine similarity of the items' user
sets, shrunk towards 0 when few users support it. Each target item j keeps its `k` most similar
items as neighbours; a history scores j with the summed similarity of the neighbours it contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.errors import ModelError
from recsys_core.models import loop
from recsys_core.models.base import Capabilities, Recommender
from recsys_core.models.ease import matrix_columns
from recsys_core.models.histories import ItemMatrix, history_matrix, low_rank, training_matrix
from recsys_core.models.settings import Settings, search, setting
from recsys_core.progress import Progress

# Rows of the co-occurrence matrix densified at once while picking neighbours: bounds that step
# to about 64 MiB whatever the catalogue size.
_CHUNK_CELLS = 2**24
# Bytes per co-occurrence cell of a block while it is sparse (float32 value + int32 column, plus
# scipy's int64 row accounting slack), and the dense step's working set (a chunk and ~4 temporaries).
_SPARSE_CELL_BYTES = 12
_DENSE_STEP_BYTES = 5 * 4 * _CHUNK_CELLS
# Co-occurrences that fill less than this share of catalogue x catalogue pick neighbours from their
# nonzero cells (`_top_neighbours_sparse`): 5M rows / 100k items (2.7% filled) 0.2-0.6 s per 1,503-item
# block instead of 1.3 s; ML-100k (70% filled) stays dense, 0.1 s instead of 0.3. The sparse path's
# temporaries (~24 bytes per nonzero) stay inside what `block_rows` budgets for a full block (12 per cell).
_SPARSE_TOPK_DENSITY = 0.25
# Catalogues up to this size score through a dense copy of W (<= 256 MiB): much faster than a
# sparse-sparse product, which larger catalogues fall back to.
_DENSE_ITEMS = 8192


@dataclass
class ItemKNNConfig(Settings):
    k: int = setting(100, "Neighbours kept per item.", ge=1)
    shrink: float = setting(10.0, "Added to the cosine denominator; damps similarities from few co-users.", ge=0)
    recency_half_life: float = setting(0.0, "Above 0, a history item's weight halves every this many later items "
                                            "(scoring only; needs real timestamps).", ge=0)
    embedding_dim: int = setting(64, "Rank of the truncated SVD behind item and user embeddings.", ge=1)
    memory_budget_mb: int = setting(2048, "Working memory (MB) for item co-occurrences while fitting; "
                                          "larger catalogues take more, smaller blocks.", ge=1)
    use_counts: bool = setting(True, "When the data has counts (plays, clicks), weigh each interaction by "
                                     "log(1 + count) in the co-occurrences.")
    search_space: ClassVar[dict] = {"k": search(10, 500, log=True), "shrink": search(0.0, 100.0)}


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


def _top_neighbours_sparse(cooc: sp.csr_matrix, norms: np.ndarray, shrink: float, k: int, start: int,
                           stop: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`_top_neighbours` on the block's nonzero co-occurrences only (the same float32 similarities): rows
    sorted by their count of co-occurring items, padded to the longest of a chunk of similar rows, then
    top-k. Its cost follows the co-occurring pairs, not rows x catalogue. A row with fewer than k
    co-occurring items is completed with distinct zero-similarity items, as the dense top-k does."""
    part, rows = cooc[start - offset:stop - offset], stop - start
    counts = np.diff(part.indptr)
    r = np.repeat(np.arange(rows), counts)
    c = part.indices.astype(np.int64)
    denom = norms[start + r] * norms[c] + np.float32(shrink)
    sim = np.where(denom > 0, part.data / np.maximum(denom, np.float32(1e-12)), np.float32(0)).astype(np.float32)
    sim[c == start + r] = 0.0  # an item is not its own neighbour
    values, indices = np.zeros((rows, k), np.float32), np.full((rows, k), -1, np.int64)
    order, done = np.argsort(counts, kind="stable"), 0
    while done < rows:
        end = loop.chunk_end(counts[order], done, rows, _CHUNK_CELLS)
        idx = order[done:end]
        vals, cols = _padded_rows(part.indptr, counts, idx, sim, c)
        _, pos = torch.topk(torch.from_numpy(_tie_broken(vals, cols)), min(k, vals.shape[1]), dim=1)
        top, got = np.take_along_axis(vals, pos.numpy(), axis=1), np.take_along_axis(cols, pos.numpy(), axis=1)
        found = top > 0  # padding is -inf, and zero similarity is no neighbour
        values[idx, :found.shape[1]] = np.where(found, top, 0.0)
        indices[idx, :found.shape[1]] = np.where(found, got, -1)
        done = end
    _fill_with_unrelated(indices, len(norms))
    return values, indices


def _tie_broken(vals: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 keys in the order of the float32 `vals`, equal values ordered lower item first: a scale of
    1 + (2^24 - item) 2^-50 moves a value by < 2^-26 of itself, less than the 2^-24 between two float32s,
    so ties break by item index whatever the padding or chunk a row is picked in."""
    return vals.astype(np.float64) * (1.0 + (2.0**24 - cols) * 2.0**-50)


def _padded_rows(indptr: np.ndarray, counts: np.ndarray, idx: np.ndarray, sim: np.ndarray, c: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rows `idx` of a CSR block's similarities and columns as [len(idx), longest] (padding: -inf, 0)."""
    width = max(1, int(counts[idx].max()))
    rr = np.repeat(np.arange(len(idx)), counts[idx])
    pos = np.arange(len(rr)) - np.repeat(np.cumsum(counts[idx]) - counts[idx], counts[idx])
    src = indptr[idx][rr] + pos
    vals, cols = np.full((len(idx), width), -np.inf, np.float32), np.zeros((len(idx), width), np.int64)
    vals[rr, pos], cols[rr, pos] = sim[src], c[src]
    return vals, cols


def _fill_with_unrelated(indices: np.ndarray, n_items: int) -> None:
    """Fill each row's trailing -1 slots with the lowest item indices the row does not hold yet."""
    short = np.flatnonzero(indices[:, -1] < 0)
    if not len(short):
        return
    k = indices.shape[1]
    held = indices[short]
    width = min(n_items, 2 * k + 1)  # a row holds < k items: at least k + 1 - held of these are free
    present = np.zeros((len(short), width), dtype=bool)
    rr, cc = np.nonzero((held >= 0) & (held < width))
    present[rr, held[rr, cc]] = True
    free = ~present
    need = (held < 0).sum(axis=1)
    pick = free & (np.cumsum(free, axis=1) <= need[:, None])
    held[held < 0] = np.nonzero(pick)[1]  # both in row-major order: each row's free items fill its slots
    indices[short] = held


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
    order_free_hint = "set recency_half_life to 0 (no recency weights)"

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
        # One path per fit, so ties among equal similarities break the same way in every block. The
        # pairs each user's history makes bound the co-occurrences from above, so doubt keeps it dense.
        sparse = float((np.diff(x.indptr).astype(np.float64) ** 2).sum()) < _SPARSE_TOPK_DENSITY * float(n) ** 2
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            cooc = (xt[start:stop] @ x).tocsr()
            if sparse:
                sims[start:stop], neighbors[start:stop] = _top_neighbours_sparse(cooc, norms, cfg.shrink, k, start,
                                                                                 stop, offset=start)
            else:
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
