"""Training in a background thread, so a page can poll progress and other sessions stay responsive.

torch releases the GIL inside its kernels, so a training thread leaves the web server free to
serve other browser sessions; cancellation is the cooperative flag on `Progress`.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any

from recsys_core.data.dataset import Dataset
from recsys_core.data.errors import DataError
from recsys_core.experiment import RunResult, run_experiment
from recsys_core.progress import Progress


class TrainingJob:
    """One run of `run_experiment` on its own thread. States: pending, running, finished, cancelled, failed."""

    def __init__(self, ds: Dataset, family: str, overrides: dict[str, Any] | None = None, *,
                 workspace: Any = None, dataset_name: str | None = None, split_kind: str = "leave_one_out") -> None:
        self.family = family
        self.overrides = dict(overrides or {})
        self.progress = Progress()
        self.state = "pending"
        self.result: RunResult | None = None
        self.error: str | None = None
        self._args = (ds, workspace, dataset_name, split_kind)
        self._thread = threading.Thread(target=self._run, name=f"train-{family}", daemon=True)

    def start(self) -> TrainingJob:
        self.state = "running"
        self._thread.start()
        return self

    def _run(self) -> None:
        ds, workspace, dataset_name, split_kind = self._args
        try:
            self.result = run_experiment(ds, self.family, self.overrides, split_kind=split_kind,
                                         progress=self.progress, workspace=workspace, dataset_name=dataset_name)
            self.state = self.result.status
        except DataError as err:
            self.error, self.state = str(err), "failed"
        except Exception as err:  # noqa: BLE001  a page must show a message, never lose the thread silently
            self.error = f"{type(err).__name__}: {err}"
            self.details = traceback.format_exc()
            self.state = "failed"

    def cancel(self) -> None:
        self.progress.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running"
