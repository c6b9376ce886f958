"""Run the API under uvicorn: one process, or `workers` processes forked after the model is loaded (`recsys serve`).

Workers are forked from the process that loaded the model and the dataset, so the weights' and the dataset's
arrays stay in pages the workers share (copy-on-write: nothing writes them); each worker then runs its own
uvicorn server on the one listening socket, and the kernel spreads connections between them. Each worker polls
for a new active run on its own and loads it by itself (a swap costs each worker its own copy of the new model).

Beyond one machine the server holds no state but the model folder and the dataset it reads: replicas started
with the same workspace (or a copy of it) behind any load balancer serve the same model.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import tempfile

import uvicorn

from recsys_core.api.settings import ServeSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # as api/metrics.py reads it; set before prometheus_client is imported
_UVICORN = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 5}


def _app(settings: ServeSettings):
    """The app with its model loaded (the engine and torch are imported here, after the metrics' mode is set)."""
    from recsys_core.api.app import build_app
    from recsys_core.threads import use_threads

    use_threads(settings.threads)  # before any torch work: a forked worker must not inherit an OpenMP pool
    app = build_app(settings)
    # The ~470k objects of torch, pandas and the model go to the permanent generation: a full collection of them
    # took 260-530 ms (a latency spike for every request waiting), and a forked worker's collector no longer
    # writes to (and so copies) the pages it shares with the parent.
    gc.freeze()
    return app


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted. The model is loaded (and any problem reported) before the port opens."""
    if settings.workers == 1:
        app = _app(settings)
        _say(app, settings)
        uvicorn.run(app, host=settings.host, port=settings.port, **_UVICORN)
        return
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as folder:
        os.environ.setdefault(MULTIPROC_ENV, folder)  # every worker writes its counters here; /metrics sums them
        _serve_forked(settings)


def _say(app, settings: ServeSettings) -> None:
    print(f"serving {app.state.holder.served.info()} on http://{settings.host}:{settings.port} with "
          f"{settings.workers} worker(s) (docs: /docs)", file=sys.stderr, flush=True)


def _serve_forked(settings: ServeSettings) -> None:
    app = _app(settings)
    listener = socket.create_server((settings.host, settings.port), backlog=2048)
    listener.set_inheritable(True)
    _say(app, settings)
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own event loop and uvicorn server on the shared socket
            code = 0
            try:
                uvicorn.Server(uvicorn.Config(app, **_UVICORN)).run(sockets=[listener])
            except BaseException:  # noqa: BLE001  reported by the traceback below; the parent sees the status
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    listener.close()

    def stop_workers(_signum, _frame) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    for child in children:
        os.waitpid(child, 0)
