"""`OpenAIBackend`: an OpenAI-compatible `/v1/chat/completions` server (Ollama, vLLM, llama.cpp server) that
the operator listed (`recsys_core.blurbs.endpoints`), streaming (server-sent events) or not, standard library
only. What a hostile or broken server can do is bounded:

- where: a URL that is not one of the operator's endpoints is refused before any connection is made; a
  redirect is an error (never followed); the API key goes only to the endpoint whose `key_env` holds it;
- memory: the reply is read in chunks of at most `CHUNK_BYTES`, a streamed line may hold at most
  `MAX_LINE_BYTES` (counted before the line ends) and the whole reply at most `MAX_REPLY_BYTES`;
- time: `timeout_s` bounds the whole request, connect to last byte. A watchdog shuts the socket at the
  deadline and every read waits at most the time left, so a server trickling one byte every 2 s cannot hold
  a request past it;
- text: every reply that is not the JSON a chat server sends (bad JSON, nesting 200,000 deep, wrong types,
  an error object) is an `LLMError` with what to do, and a server's own text is never echoed to the page.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from typing import Self

from recsys_core.blurbs.backend import Backend, GenerationStats, Message
from recsys_core.blurbs.constrain import Guide
from recsys_core.blurbs.endpoints import (
    ENV_ENDPOINTS,
    ENV_MODEL,
    ENV_URL,
    Endpoint,
    chat_endpoint,
    endpoint_for_url,
    operator_endpoints,
)
from recsys_core.errors import LLMError

MAX_REPLY_BYTES = 1 << 20  # a chat reply of a few sentences is a few KB; more is not a chat server
MAX_LINE_BYTES = 64 << 10  # one server-sent event line carries one small delta
CHUNK_BYTES = 16 << 10  # bytes asked of the socket per read
_CHAT_ENDPOINT = "is the URL an OpenAI-compatible /v1/chat/completions endpoint (e.g. http://127.0.0.1:11434 " \
                 "for Ollama)? The operator can fix it in " + ENV_ENDPOINTS


def operator_key_for(url: str) -> str | None:
    """The API key of the operator's endpoint at `url` (from its `key_env`), or None: a URL the operator did not
    configure never receives a server secret."""
    try:
        target = chat_endpoint(url)
        keys = [e.api_key() for e in operator_endpoints().values() if e.url == target]
    except LLMError:
        return None
    return next((key for key in keys if key), None)


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat-completions server; the API key is sent, never shown or logged.

    A `Guide` is not sent: the chat protocol has no portable way to pre-write a reply or constrain it,
    so replies from a server rely on the prompt and the grounding check alone. Nothing to load: "ready".
    """

    supports_guide = False

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 name: str | None = None) -> None:
        self.endpoint = chat_endpoint(url)
        if not model.strip():
            raise LLMError("no model name for the LLM server",
                           hint="name the model the server should run (e.g. `llama3.2` for Ollama)")
        self.model, self.api_key, self.timeout_s = model.strip(), api_key or None, float(timeout_s)
        self.endpoint_name = name or urllib.parse.urlsplit(self.endpoint).netloc  # what messages call it: no URL shown
        super().__init__(f"openai:{self.model}@{self.endpoint_name}", self.model)

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint) -> OpenAIBackend:
        """The backend of one of the operator's endpoints (`endpoints.operator_endpoints()`), with its key."""
        return cls(endpoint.url, endpoint.model, endpoint.api_key(), endpoint.timeout_s, name=endpoint.name)

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float | None = None) -> OpenAIBackend:
        """Arguments first, then RECSYS_LLM_URL / RECSYS_LLM_MODEL; the key of the operator's endpoint at that URL
        (if any). The URL must still be one of the operator's endpoints when it is used."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise LLMError("no LLM server URL", hint=f"the operator lists servers in {ENV_ENDPOINTS} or {ENV_URL}")
        endpoint = endpoint_for_url(url)
        model = model or os.environ.get(ENV_MODEL, "") or (endpoint.model if endpoint else "")
        timeout = timeout_s if timeout_s is not None else (endpoint.timeout_s if endpoint else 60.0)
        return cls(url, model, api_key or operator_key_for(url), timeout)

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Generator[str, None, None]:
        body = {"model": self.model, "messages": list(messages), "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "stream": bool(stream)}
        self.last_stats = stats = GenerationStats()
        return self._run(body, stream, stats)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _run(self, body: dict, stream: bool, stats: GenerationStats) -> Generator[str, None, None]:
        start = time.perf_counter()
        if endpoint_for_url(self.endpoint) is None:  # before any connection: only the operator's servers
            raise LLMError(f"the LLM server {self.endpoint_name!r} is not one of the servers the operator configured",
                           hint=f"pick one of the operator's servers; the operator lists them in {ENV_ENDPOINTS}")
        exchange = None
        try:
            with (exchange := _Exchange(self.endpoint, self.timeout_s)):
                resp = exchange.post(json.dumps(body).encode(), self._headers())
                if resp.status != 200:
                    raise self._status_error(resp.status, resp.reason)
                reader = _chunks(resp, exchange)
                for chunk in _sse_chunks(reader) if stream else _whole_reply(reader):
                    if chunk:
                        stats.tokens += 1  # one delta is about one token on the servers we target
                        if stats.first_chunk_s is None:
                            stats.first_chunk_s = time.perf_counter() - start
                        yield chunk
        except LLMError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise self._late() if exchange is not None and exchange.expired() else self._unreachable(err) from err
        finally:
            stats.total_s = time.perf_counter() - start

    def _status_error(self, code: int, reason: str) -> LLMError:
        # A status line only: the body of an arbitrary server is never read, let alone echoed to the page.
        if 300 <= code < 400:
            return LLMError(f"the LLM server {self.endpoint_name!r} answered HTTP {code} (a redirect, not followed)",
                            hint=f"the operator should give the server's final URL in {ENV_ENDPOINTS}")
        return LLMError(f"the LLM server {self.endpoint_name!r} answered HTTP {code} {str(reason)[:80]}",
                        hint="check the model name and the server's own log")

    def _late(self) -> LLMError:
        return LLMError(f"the LLM server {self.endpoint_name!r} did not finish its reply within {self.timeout_s:g} s",
                        hint="is the model still loading? try again in a moment; the operator can raise this "
                             f"endpoint's timeout_s in {ENV_ENDPOINTS}")

    def _unreachable(self, err: Exception) -> LLMError:
        if isinstance(err, TimeoutError):
            return self._late()
        if isinstance(err, ConnectionRefusedError):
            return LLMError(f"could not reach the LLM server {self.endpoint_name!r}: connection refused",
                            hint="is the server running on that host and port? check that it is reachable from "
                                 "this machine")
        if isinstance(err, socket.gaierror | ssl.SSLError):
            return LLMError(f"could not reach the LLM server {self.endpoint_name!r}: {type(err).__name__}",
                            hint="check the host name and its certificate, and that the server is reachable")
        return LLMError(f"the connection to the LLM server {self.endpoint_name!r} failed ({type(err).__name__})",
                        hint="try again; if it keeps failing, check the server's own log")


class _Exchange:
    """One HTTP request under a total deadline: a watchdog thread shuts the socket when it passes, and each
    read waits at most the time left (`wait`)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.parts = urllib.parse.urlsplit(url)
        self.deadline = time.monotonic() + timeout_s
        conn_class = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        self.conn = conn_class(self.parts.hostname, self.parts.port, timeout=timeout_s)
        # Our own reference: http.client drops `conn.sock` once a response will close the connection (any
        # HTTP/1.0 server), while the response still reads from that socket.
        self.sock: socket.socket | None = None
        self._fired = threading.Event()
        self._watchdog = threading.Timer(timeout_s, self._fire)
        self._watchdog.daemon = True

    def __enter__(self) -> Self:
        self._watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self._watchdog.cancel()
        self.conn.close()

    def _fire(self) -> None:
        self._fired.set()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked on a trickling server
            except OSError:
                pass

    def expired(self) -> bool:
        return self._fired.is_set() or time.monotonic() >= self.deadline

    def wait(self) -> None:
        """Before a read: give up if the deadline passed, else let the socket wait only the time left."""
        left = self.deadline - time.monotonic()
        if left <= 0 or self._fired.is_set():
            raise TimeoutError("the total deadline passed")
        if self.sock is not None:
            self.sock.settimeout(left)

    def post(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        path = self.parts.path + (f"?{self.parts.query}" if self.parts.query else "")
        self.conn.connect()  # bounded by the connection's timeout (the whole request's)
        self.sock = self.conn.sock
        self.wait()
        self.conn.request("POST", path, body=body, headers=headers)
        self.wait()
        return self.conn.getresponse()  # status line and headers: bounded by http.client, timed by the watchdog


def _chunks(resp: http.client.HTTPResponse, exchange: _Exchange) -> Iterator[bytes]:
    """The body in chunks of at most `CHUNK_BYTES`, the deadline checked after every chunk, at most
    `MAX_REPLY_BYTES` in all."""
    received = 0
    while True:
        exchange.wait()
        data = resp.read1(CHUNK_BYTES)
        if exchange.expired():  # also when the watchdog's shutdown ended the read early
            raise TimeoutError("the total deadline passed")
        if not data:
            return
        received += len(data)
        if received > MAX_REPLY_BYTES:
            raise _too_long("sent", MAX_REPLY_BYTES)
        yield data


def _too_long(what: str, limit: int) -> LLMError:
    size = f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit >> 10} KB"
    return LLMError(f"the LLM server {what} over {size}; a chat reply is a few KB",
                    hint=f"lower the reply length on the server; {_CHAT_ENDPOINT}")


def _parse(data: bytes) -> object:
    """JSON of one reply or event; every way it can fail (bad JSON, too deep, bad bytes) is an `LLMError`."""
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except RecursionError as err:
        raise LLMError(f"the LLM server sent JSON nested too deep to read ({len(data):,} bytes)",
                       hint=_CHAT_ENDPOINT) from err
    except ValueError as err:
        raise LLMError(f"the LLM server sent a reply that is not valid JSON ({len(data):,} bytes)",
                       hint=_CHAT_ENDPOINT) from err


def _content(payload: object, streaming: bool) -> str:
    """The text of one chat-completions reply (or stream delta); raises on error objects and odd shapes."""
    if isinstance(payload, dict) and payload.get("error"):
        raise LLMError("the LLM server answered with an error object instead of a reply",
                       hint="check the model name and the server's own log")
    try:
        choice = payload["choices"][0]
        part = choice["delta"] if streaming else choice["message"]
        content = part.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise LLMError(f"the LLM server's reply has no choices[0].{'delta' if streaming else 'message'}.content",
                       hint=_CHAT_ENDPOINT) from err
    if not isinstance(content, str):
        raise LLMError("the LLM server's reply content is not text", hint=_CHAT_ENDPOINT)
    return content


def _whole_reply(chunks: Iterator[bytes]) -> Iterator[str]:
    data = bytearray()
    for chunk in chunks:  # at most MAX_REPLY_BYTES in all
        data += chunk
    yield _content(_parse(bytes(data)), streaming=False)


def _sse_chunks(chunks: Iterator[bytes]) -> Iterator[str]:
    """Deltas of a server-sent-events stream (`data: {...}` lines, ended by `data: [DONE]`), each line's length
    counted as its bytes arrive."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[:end + 1]
            if _event_done(line):
                return
            yield from _event_text(line)
        if len(pending) > MAX_LINE_BYTES:
            raise _too_long("streamed a line", MAX_LINE_BYTES)
    if pending and not _event_done(bytes(pending)):
        yield from _event_text(bytes(pending))


def _event_data(line: bytes) -> bytes | None:
    line = line.strip()
    if not line.startswith(b"data:"):
        return None  # blank separators, comments and event/id fields carry no text
    return line[5:].strip()


def _event_done(line: bytes) -> bool:
    return _event_data(line) == b"[DONE]"


def _event_text(line: bytes) -> Iterator[str]:
    data = _event_data(line)
    if data is not None:
        yield _content(_parse(data), streaming=True)
