"""Progress reporting and cancellation shared by training, the CLI and the pages.

The engine calls `progress.update(...)`; a page renders the events, a CLI prints them. Cancel is
cooperative: long loops check `progress.cancelled` between steps and stop cleanly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    step: int
    total: int
    epoch: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.step or not self.total:
            return None
        return self.elapsed_s / self.step * max(self.total - self.step, 0)


class Progress:
    """Collects events (thread-safe) and carries the cancel flag.

    `callback`, if given, is called with each event, in the training thread.
    """

    def __init__(self, callback: Callable[[ProgressEvent], None] | None = None) -> None:
        self.events: list[ProgressEvent] = []
        self._callback = callback
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    def update(self, step: int, total: int, **kw) -> ProgressEvent:
        event = ProgressEvent(step=step, total=total, elapsed_s=time.perf_counter() - self._start, **kw)
        with self._lock:
            self.events.append(event)
        if self._callback:
            self._callback(event)
        return event

    def cancel(self) -> None:
        self._cancel.set()

    def quiet(self) -> Progress:
        """A view sharing this cancel flag with events of its own: inner work (validation inside training)
        stops on Cancel without overwriting the outer progress a page shows."""
        inner = Progress()
        inner._cancel = self._cancel
        return inner

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def snapshot(self) -> list[ProgressEvent]:
        with self._lock:
            return list(self.events)
