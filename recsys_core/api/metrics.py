"""Prometheus metrics of `recsys serve` (prometheus_client): requests, latency, errors, batch sizes, the model.

Each app has its own registry (tests start several in one process). With several uvicorn workers the server sets
`PROMETHEUS_MULTIPROC_DIR` before they start, and /metrics adds up every worker's values from there.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by api/server.py for several workers
# Route templates: a path outside them is counted as "other", so a scanner cannot grow the label set.
ENDPOINTS = ("/v1/recommend", "/v1/similar", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
ITEM_PREFIX, ITEM_ROUTE = "/v1/items/", "/v1/items/{item_id}"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def endpoint_of(path: str) -> str:
    if path in ENDPOINTS:
        return path
    return ITEM_ROUTE if path.startswith(ITEM_PREFIX) else "other"


class Metrics:
    """The server's metrics and the ASGI middleware that counts every request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.requests = Counter("recsys_api_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("recsys_api_request_seconds", "Time from request to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("recsys_api_errors", "Requests answered with a 4xx or 5xx status", ["endpoint", "status"],
                              registry=self.registry)
        self.batch = Histogram("recsys_api_batch_size", "Recommendation requests scored per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.model = Gauge("recsys_api_model_info", "The served model (value 1): family, weights version, run",
                           ["model", "model_version", "run", "dataset"], registry=self.registry,
                           multiprocess_mode="liveall")
        self._shown: tuple | None = None

    def model_loaded(self, info: dict) -> None:
        """Point the model gauge at the served model (the previous one's series is removed, or set to 0 where
        several workers share the metrics). Per process: a forked worker starts with its values reset."""
        shown = (os.getpid(), info["model"], info["model_version"], str(info["run"]), info["dataset"])
        if shown == self._shown:
            return
        if self._shown is not None and self._shown[0] == shown[0]:
            if self.multiprocess:
                self.model.labels(*self._shown[1:]).set(0)
            else:
                self.model.remove(*self._shown[1:])
        self.model.labels(*shown[1:]).set(1)
        self._shown = shown

    def batches(self, sizes: list[int]) -> None:
        """Record the batch sizes gathered since the last call (and clear them)."""
        taken = len(sizes)
        for size in sizes[:taken]:
            self.batch.observe(size)
        del sizes[:taken]

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app):
        """An ASGI app counting each request of `app`: status, latency, errors. A request is counted before its
        last byte goes out, so a client that asks /metrics right after an answer (another worker may serve it)
        finds that answer counted."""

        async def counted(scope, receive, send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started, status, done = time.perf_counter(), [500], [False]

            def record() -> None:
                done[0] = True
                endpoint, code = endpoint_of(scope.get("path", "")), str(status[0])
                self.requests.labels(endpoint, scope.get("method", ""), code).inc()
                self.latency.labels(endpoint).observe(time.perf_counter() - started)
                if status[0] >= 400:
                    self.errors.labels(endpoint, code).inc()

            async def sending(message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                elif message["type"] == "http.response.body" and not message.get("more_body") and not done[0]:
                    record()
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                if not done[0]:  # no answer went out (the handler crashed, or the client left)
                    record()

        return counted
