"""When a sequential model's refit (`refit=true`) can run, and for how many steps: the early-stopped run's best."""

from __future__ import annotations

import numpy as np

from recsys_core.models.loop import LoopResult
from recsys_core.models.settings import TrainConfig
from recsys_core.progress import Progress


def best_step(history: list[dict], best_epoch: int) -> int | None:
    """The optimizer step at the end of `best_epoch`, whose weights early stopping kept; None when none was kept."""
    return next((h["step"] for h in history if h["epoch"] == best_epoch), None)


def obstacle(seqs: list[np.ndarray] | None, steps: int | None, first: LoopResult, lcfg: TrainConfig,
             progress: Progress) -> str | None:
    """Why a refit cannot run, or None."""
    if progress.cancelled:
        return "the run was cancelled"
    if seqs is None:
        return "needs a leave-one-out split (its validation items have a place in each history)"
    if steps is None:
        return "validation never ran, so no step count was chosen"
    need = steps * first.cpu_seconds / max(1, first.steps)
    left = lcfg.cpu_budget_s - first.cpu_seconds
    if lcfg.cpu_budget_s and need > left:
        return f"the CPU budget leaves {max(0.0, left):.0f} s and the refit needs about {need:.0f} s"
    return None
