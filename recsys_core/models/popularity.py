"""Most-popular baseline: every history gets the same scores, the training interaction counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.errors import ModelError
from recsys_core.models.base import Capabilities, Recommender
from recsys_core.models.histories import flatten, training_histories, training_matrix
from recsys_core.models.settings import Settings, setting
from recsys_core.progress import Progress


@dataclass
class PopularityConfig(Settings):
    """Popularity is the number of training interactions per item (their log(1 + count) sum with counts)."""

    use_counts: bool = setting(True, "When the data has counts (plays, clicks), sum log(1 + count) per item "
                                     "instead of counting interactions.")


class Popularity(Recommender):
    """Scores item i with how often it was interacted with in training, whatever the history."""

    family = "popularity"
    description = "Popularity: most-interacted items (yardstick)"
    config_class = PopularityConfig

    def __init__(self, config: PopularityConfig | None = None) -> None:
        super().__init__(config)
        self.counts_ = torch.zeros(0, dtype=torch.float32)

    def fit(self, dataset: Dataset, progress: Progress | None = None,
            split: Split | None = None) -> Popularity:
        """Count interactions per item in `split.train` (all sequences without a split)."""
        self._remember_catalogue(dataset)
        if self.config.use_counts and dataset.has_counts:
            weighted = training_matrix(dataset, split, self.n_items_, use_counts=True)
            self.counts_ = torch.from_numpy(np.asarray(weighted.sum(axis=0), dtype=np.float32).ravel())
        else:
            _, flat = flatten(training_histories(dataset, split), self.n_items_)
            self.counts_ = torch.from_numpy(np.bincount(flat, minlength=self.n_items_).astype(np.float32))
        if progress is not None:
            progress.update(1, 1, message="counted item popularity")
        return self

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(similar_items=False)  # one count per item: every cosine is the same

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """The training counts, one row per history (rows are copies, safe to edit in place)."""
        flatten(histories, self.n_items_)  # same validation as every model, though histories are unused
        return self.counts_.unsqueeze(0).repeat(len(histories), 1)

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The training counts of `items`, one row per history."""
        flatten(histories, self.n_items_)
        return self.counts_[torch.from_numpy(self._check_items(items))].unsqueeze(0).repeat(len(histories), 1)

    def item_embeddings(self) -> np.ndarray:
        """[n_items, 1]: the training count itself."""
        return self.counts_.numpy()[:, None].copy()

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[n, 1] ones, so user . item reproduces the score."""
        return np.ones((len(histories), 1), dtype=np.float32)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        counts = tensors["counts"].float()
        if counts.shape != (self.n_items_,):
            raise ModelError(f"popularity counts have shape {tuple(counts.shape)}, expected ({self.n_items_},)",
                            hint="the artifact is damaged; retrain the model")
        self.counts_ = counts
