"""Training in a background thread (`background.BackgroundJob`), so a page can poll progress and
other sessions stay responsive; cancelling is the cooperative flag on `Progress`."""

from __future__ import annotations

from typing import Any

from recsys_core.background import BackgroundJob
from recsys_core.data.dataset import Dataset
from recsys_core.training.experiment import RunResult, run_experiment


class TrainingJob(BackgroundJob):
    """One run of `run_experiment` on its own thread; `result` is its `RunResult`."""

    def __init__(self, ds: Dataset, family: str, overrides: dict[str, Any] | None = None, *,
                 workspace: Any = None, dataset_name: str | None = None, split_kind: str = "leave_one_out") -> None:
        super().__init__(name=f"train-{family}")
        self.family = family
        self.overrides = dict(overrides or {})
        self.result: RunResult | None = None
        self._args = (ds, workspace, dataset_name, split_kind)

    def work(self) -> tuple[RunResult, str]:
        ds, workspace, dataset_name, split_kind = self._args
        result = run_experiment(ds, self.family, self.overrides, split_kind=split_kind, progress=self.progress,
                                workspace=workspace, dataset_name=dataset_name)
        return result, result.status
