"""Training jobs: one child process per run (`training.worker`), recorded in the workspace's job store.

`TrainingJob.start` creates the job's row, starts the process and returns a handle; the row, not the
handle, is the truth, so any tab (or another server on the same workspace) sees the job and can cancel
it through `store.request_cancel`. The handle adds what only the launching process can do: wait for
the child (so it never lingers as a zombie) and record a child that died without a word.

The store is passed in (a `recsys_core.workspace.jobs.JobStore`): the workspace is a layer above (README, Layers).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

WORKER = "recsys_core.training.worker"
_POLL_S = 0.1


class TrainingJob:
    """Handle on one training job: its state comes from the job store, so it is the same from any tab."""

    def __init__(self, store: Any, job_id: int, process: subprocess.Popen | None = None) -> None:
        self.store, self.id, self.process = store, job_id, process

    @classmethod
    def start(cls, store: Any, dataset: str, family: str, overrides: dict[str, Any] | None = None, *,
              split_kind: str = "leave_one_out") -> TrainingJob:
        """Record a job on the saved dataset `dataset` and start its process; returns at once."""
        job_id = store.create(dataset, family, dict(overrides or {}), split_kind)
        with open(store.log_path(job_id), "ab") as log:
            # The child opens the same workspace by its path: nothing but a path and an id crosses over.
            process = subprocess.Popen([sys.executable, "-m", WORKER, str(store.workspace.root), str(job_id)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        store.set_pid(job_id, process.pid)
        job = cls(store, job_id, process)
        threading.Thread(target=job._reap, name=f"job-{job_id}-reaper", daemon=True).start()
        return job

    def _reap(self) -> None:
        """Wait for the child; if it died without recording an end (killed, segfault), record one."""
        code = self.process.wait()
        if code < 0:
            name = signal.Signals(-code).name
            self.store.end_if_active(self.id, "interrupted", f"the training process was stopped by {name} "
                                     "(killed, or out of memory); start it again")
        elif code:
            self.store.end_if_active(self.id, "failed", f"the training process exited with code {code}; "
                                     f"see {self.store.log_path(self.id)}")

    def record(self) -> Any:
        return self.store.get(self.id)

    @property
    def state(self) -> str:
        return self.record().status

    @property
    def error(self) -> str:
        return self.record().error

    @property
    def running(self) -> bool:
        return self.record().active

    @property
    def result(self) -> dict:
        """The recorded run's summary (`RunResult.summary()`), empty until the run is recorded."""
        return self.record().result

    def cancel(self) -> bool:
        return self.store.request_cancel(self.id)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (as recorded); True if it did within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        if self.process is not None:  # the row is final; let the process exit too
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return True
