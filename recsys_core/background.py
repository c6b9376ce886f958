"""Long work on a daemon thread, so a page can poll its progress and other sessions stay responsive.

torch and numpy release the GIL inside their kernels, so a worker thread leaves the web server free
to serve other browser sessions. Cancelling is cooperative: the work checks the flag on `Progress`.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

from recsys_core.errors import RecsysError
from recsys_core.progress import Progress


class BackgroundJob:
    """Runs `work()` once on its own thread. States: pending, running, finished, cancelled, failed.

    Subclasses implement `work()`, returning (result, final state). A `RecsysError` fails the job with its
    message; any other exception fails it with the message and the traceback in `details`, so a page can
    show what happened instead of losing the thread silently.
    """

    def __init__(self, name: str) -> None:
        self.progress = Progress()
        self.state = "pending"
        self.result: Any = None
        self.error: str | None = None
        self.details: str | None = None
        self.started = time.perf_counter()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def work(self) -> tuple[Any, str]:
        raise NotImplementedError

    def release(self) -> None:
        """Called when the work ends, however it ends: drop big inputs the job no longer needs."""

    def start(self):
        self.state, self.started = "running", time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result, self.state = self.work()
        except RecsysError as err:
            self.error, self.state = str(err), "failed"
        except Exception as err:  # noqa: BLE001  a page must show a message, never lose the thread silently
            self.error, self.details, self.state = f"{type(err).__name__}: {err}", traceback.format_exc(), "failed"
        finally:
            self.ended = time.perf_counter()
            self.release()

    def cancel(self) -> None:
        self.progress.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started
