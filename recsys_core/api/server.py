"""Run the API under uvicorn: one process, or `workers` processes that each load the model (`recsys serve`).

Beyond one machine the server holds no state but the model folder and the dataset it reads: replicas started
with the same workspace (or a copy of it) behind any load balancer serve the same model.
"""

from __future__ import annotations

import os
import sys
import tempfile

import uvicorn

from recsys_core.api.settings import SETTINGS_ENV, ServeSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # as api/metrics.py reads it (not imported: the supervisor stays small)


def _app(settings: ServeSettings):
    """The app of one server process (the engine and torch are imported here, never by a workers' supervisor)."""
    from recsys_core.api.app import build_app
    from recsys_core.threads import use_threads

    use_threads(settings.threads)
    return build_app(settings)


def create_app():
    """uvicorn's app factory in each worker process: the settings travel in $RECSYS_SERVE_SETTINGS."""
    return _app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted. With one worker the model is loaded (and any problem reported) before the port
    opens; with several, each worker loads its own before it answers."""
    common = {"host": settings.host, "port": settings.port, "log_level": "warning", "access_log": False,
              "timeout_graceful_shutdown": 5}
    if settings.workers == 1:
        app = _app(settings)
        print(f"serving {app.state.holder.served.info()} on http://{settings.host}:{settings.port} "
              f"(docs: /docs)", file=sys.stderr, flush=True)
        uvicorn.run(app, **common)
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as folder:
        os.environ.setdefault(MULTIPROC_ENV, folder)  # every worker writes its counters here; /metrics sums them
        print(f"serving dataset {settings.dataset!r} with {settings.workers} workers on "
              f"http://{settings.host}:{settings.port} (docs: /docs)", file=sys.stderr, flush=True)
        uvicorn.run(f"{__name__}:{create_app.__name__}", factory=True, workers=settings.workers, **common)
