"""The HTTP API of `recsys serve`: FastAPI over the engine's use cases, with OpenAPI docs at /docs.

A client like a page: each handler parses the request, calls one use case and serialises its plain-data answer.
Every bad request gets a 4xx JSON body `{"error", "hint"}` (never a traceback); the body size, the history length
and k are bounded; `RECSYS_API_KEY`, when set, is required on /v1 (compared in constant time).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from recsys_core.api.metrics import Metrics
from recsys_core.api.serving import Coalescer, ModelHolder
from recsys_core.api.settings import ServeSettings
from recsys_core.errors import RecsysError, ResourceError
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.recommend.usecases import (
    UNKNOWN_ERROR,
    Query,
    UnknownIdError,
    check_query,
    contributors,
    item_index,
    similar,
)

API_KEY_ENV = "RECSYS_API_KEY"


class FiltersBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    any_of: dict[str, list[str]] = Field(default_factory=dict, description="column -> values; an item passes when "
                                         "its '|'-joined column holds one of them", examples=[{"genres": ["Horror"]}])
    between: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict, description="column -> [low, high], inclusive, either end null",
        examples=[{"year": [1990, None]}])


class RecommendBody(BaseModel):
    """A user id, or a history of item ids (oldest first) scored as given: the latest events count at once."""

    model_config = ConfigDict(extra="forbid")
    user: str | int | None = Field(None, description="a user id of the served dataset", examples=["42"])
    history: list[str | int] | None = Field(None, description="item ids, oldest first (instead of user)")
    k: int = Field(10, description="how many items (1 to the server's max_k)")
    filters: FiltersBody = Field(default_factory=FiltersBody)
    hide_popular_top: float = Field(0.0, ge=0.0, lt=1.0, description="drop this share of the most popular items")
    exclude_seen: bool = Field(True, description="never recommend an item of the history")
    unknown_items: Literal["error", "ignore"] = Field(UNKNOWN_ERROR, description="an unknown history id: 404 "
                                                      "naming it ('error') or left out and listed ('ignore')")
    explain: bool = Field(False, description="add the history items that lift each recommendation most "
                                             "(leave-one-out score deltas, within the server's time bound)")


class SimilarBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str | int = Field(..., description="an item id of the served dataset")
    k: int = Field(10, description="how many neighbours (1 to the server's max_k)")


class ErrorBody(BaseModel):
    error: str
    hint: str


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json")


def error_response(status: int, message: str, hint: str, **extra) -> Response:
    return _json({"error": message, "hint": hint, **extra}, status)


def _status_of(err: RecsysError) -> int:
    if isinstance(err, UnknownIdError):
        return 404
    if isinstance(err, ResourceError):
        return 413
    return 422


def _query(body: RecommendBody) -> Query:
    return Query.of(user=body.user, history=body.history, k=body.k, any_of=body.filters.any_of,
                    between=body.filters.between, hide_popular_top=body.hide_popular_top,
                    exclude_seen=body.exclude_seen, unknown_items=body.unknown_items)


def _auth(key: str | None) -> Callable:
    """A dependency that requires `key` (Authorization: Bearer KEY, or X-API-Key: KEY) when one is set."""
    expected = key.encode() if key else None

    async def check(request: Request) -> None:  # async: a plain def would run on a thread pool per request
        if expected is None:
            return
        given = request.headers.get("x-api-key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if not hmac.compare_digest(given.encode(), expected):
            raise _Unauthorized()

    return check


class _Unauthorized(RecsysError):
    """No or a wrong API key (answered 401)."""

    def __init__(self) -> None:
        super().__init__("missing or wrong API key", hint="send the key as 'Authorization: Bearer KEY' "
                                                         "(the server's RECSYS_API_KEY)")


def build_app(settings: ServeSettings, holder: ModelHolder | None = None, api_key: str | None = None) -> FastAPI:
    """The app serving `holder` (loaded from `settings` when not given). `api_key` defaults to $RECSYS_API_KEY."""
    holder = holder or ModelHolder(settings)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    coalescer = Coalescer(settings.limits, settings.batch_max, settings.batch_wait_ms, settings.batch)
    metrics = Metrics()  # its model gauge is set by each serving process (lifespan, /readyz, /metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        metrics.model_loaded(holder.served.info())  # in the process that serves (after a worker's fork)
        holder.start_polling()
        yield
        holder.stop()
        coalescer.close()

    app = FastAPI(title="RecSys Explorer API", version="1", lifespan=lifespan,
                  description="Real-time recommendations from the active run of one dataset (`recsys serve`). "
                              "Errors are JSON: {error, hint}.")
    guarded = [Depends(_auth(key))]
    errors = {code: {"model": ErrorBody} for code in (401, 404, 413, 422)}

    @app.exception_handler(RecsysError)
    async def recsys_error(_request: Request, err: RecsysError) -> Response:
        status = 401 if isinstance(err, _Unauthorized) else _status_of(err)
        return error_response(status, err.message, err.hint or "", **({"setting": err.setting} if err.setting else {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        problems = err.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error_response(400, "the body is not valid JSON", "send a JSON object with Content-Type: "
                                  "application/json (see /docs)")
        if "json" not in request.headers.get("content-type", "json"):
            return error_response(415, "the body is not sent as JSON", "send it with Content-Type: application/json")
        where = ", ".join(f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg', '')}"
                          for p in problems[:5])
        return error_response(422, f"invalid request: {where}", "see the request schema at /docs")

    @app.exception_handler(Exception)
    async def crashed(_request: Request, err: Exception) -> Response:  # the log keeps the traceback
        return error_response(500, f"internal error ({type(err).__name__})", "try again; if it persists, tell the "
                              "operator (the server log has the details)")

    @app.post("/v1/recommend", dependencies=guarded, responses=errors, tags=["recommend"])
    async def recommend(body: RecommendBody) -> Response:
        """Top-k for a user or a live history, with filters; optionally the history items behind each one."""
        served = holder.served  # this request keeps this model to its end, whatever swaps meanwhile
        query = _query(body)
        check_query(served.ds, query, settings.limits)
        result = await coalescer.recommend(served, query)
        metrics.batches(coalescer.batch_sizes)  # observed by the process that scored them (each worker its own)
        catalogue = catalogue_of(served.ds)
        if body.explain:
            found = await coalescer.run_on_model_thread(
                lambda: contributors(served.model, catalogue, result.history, result.items,
                                     budget_s=settings.explain_budget_ms / 1000.0))
            result = replace(result, contributors=found)
        return _json(result.to_dict(catalogue))

    @app.post("/v1/similar", dependencies=guarded, responses=errors, tags=["recommend"])
    async def similar_items(body: SimilarBody) -> Response:
        """The k items nearest an item by the model's item embeddings."""
        served = holder.served
        found = await coalescer.run_on_model_thread(similar, served.model, served.ds, str(body.item_id), body.k,
                                                    settings.limits)
        return _json(found)

    @app.get("/v1/items/{item_id}", dependencies=guarded, responses=errors, tags=["catalogue"])
    async def item(item_id: str) -> Response:
        """One item: its label, title, popularity and attributes."""
        catalogue = catalogue_of(holder.served.ds)
        return _json(catalogue.item(item_index(catalogue, item_id)))

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """The process answers."""
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        """A model is loaded: which one, and the last problem loading a newer one (if any)."""
        served = holder.served
        metrics.model_loaded(served.info())  # the gauge follows swaps
        return _json({"status": "ready", **served.info(), "batching": coalescer.batches(served), "swaps": holder.swaps,
                      "last_error": holder.last_error})

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text format: requests, latency, errors, batch sizes, the model version."""
        metrics.model_loaded(holder.served.info())
        metrics.batches(coalescer.batch_sizes)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.middleware)  # outermost: counts every answer, a 413 of the body limit included
    app.state.holder, app.state.coalescer = holder, coalescer
    return app


class BodyLimit:
    """ASGI middleware: a request body longer than `max_bytes` is refused with 413 before any handler reads it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send(send, self._too_large())
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(b"", message, receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _send(send, self._too_large())
                return
        await self.app(scope, _replay(body, None, receive), send)

    def _too_large(self) -> Response:
        return error_response(413, f"the request body is larger than {self.max_bytes:,} bytes",
                              "send a shorter history (the most recent items)")


def _replay(body: bytes, first: dict | None, receive):
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return first or {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _send(send, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(response.body)).encode())]})
    await send({"type": "http.response.body", "body": response.body})
