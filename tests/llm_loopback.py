"""A small real OpenAI-compatible chat-completions server on 127.0.0.1, for backend and page tests.

`LoopbackLLM` runs `http.server` in a thread. Its `reply(request_body) -> str` decides the text; `mode`
picks the behaviour: "ok" (SSE when the request asks for `stream`, else one JSON reply), "sleep"
(answers after `sleep_s`), "500", "bad-json", and the hostile ones: "flood" (one line of `flood_bytes`
bytes, never ended), "trickle" (a reply that never ends, one byte every `trickle_s`), "trickle-headers"
(the same inside the HTTP headers), "nested" (a JSON reply nested `depth` deep), "redirect" (a 307 to
`redirect_to`), "raw" (the reply text is the whole body, sent as it is). `word_delay_s` paces a streamed reply word by word, so a test can look at a page while a
draft is being written. Every request body and its headers are recorded.

The server is one the operator configured: entering it adds it to `RECSYS_LLM_ENDPOINTS` (named
`loopback-<port>`, model "tiny") and leaving removes that entry again; `operator=False` leaves it out, as a
server a visitor names. `ConnectionRecorder` is a bare listening socket that counts the connections made.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackLLM:
    def __init__(self, reply: Callable[[dict], str] | str = "Hello there.", mode: str = "ok",
                 sleep_s: float = 3.0, word_delay_s: float = 0.0, operator: bool = True, flood_bytes: int = 0,
                 trickle_s: float = 2.0, depth: int = 200_000, redirect_to: str = "") -> None:
        self.reply = reply if callable(reply) else (lambda body, text=reply: text)
        self.mode, self.sleep_s, self.word_delay_s = mode, sleep_s, word_delay_s
        self.operator, self.flood_bytes, self.trickle_s, self.depth = operator, flood_bytes, trickle_s, depth
        self.redirect_to = redirect_to
        self.sent_bytes = 0  # body bytes the hostile modes managed to write before the client hung up
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return f"loopback-{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        if self.operator:
            listed = _listed()
            listed.append({"name": self.name, "url": self.url, "model": "tiny"})
            os.environ[ENDPOINTS_ENV] = json.dumps(listed)
        return self

    def __exit__(self, *exc) -> None:
        if self.operator:  # only this server's entry: another server's (or a test's own) stays
            listed = [e for e in _listed() if e.get("name") != self.name]
            if listed:
                os.environ[ENDPOINTS_ENV] = json.dumps(listed)
            else:
                os.environ.pop(ENDPOINTS_ENV, None)
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.requests.append(body)
                owner.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self._send(404, "application/json", b'{"error": {"message": "no such route"}}')
                if owner.mode in HOSTILE:
                    try:
                        return getattr(self, "_" + owner.mode.replace("-", "_"))(body)
                    except OSError:  # the client hung up: what it was meant to do
                        return None
                if owner.mode == "sleep":
                    time.sleep(owner.sleep_s)
                if owner.mode == "500":
                    return self._send(500, "application/json", b'{"error": {"message": "model crashed"}}')
                text = owner.reply(body)
                if owner.mode == "bad-json":
                    return self._bad_json(body)
                if body.get("stream"):
                    return self._stream(text)
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}]}
                self._send(200, "application/json", json.dumps(payload).encode())

            def _bad_json(self, body: dict) -> None:
                if body.get("stream"):
                    self._send(200, "text/event-stream", b'data: {"choices": [{"delta": {"content": "Hi"\n\n')
                else:
                    self._send(200, "application/json", b"<html>not json</html>")

            def _stream(self, text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = text.split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(owner.word_delay_s)
                self.wfile.write(b"data: [DONE]\n\n")

            def _flood(self, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b"data: ")
                piece = b"x" * (64 << 10)
                while owner.sent_bytes < owner.flood_bytes:
                    self.wfile.write(piece)
                    owner.sent_bytes += len(piece)

            def _trickle(self, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.flush()
                for _ in range(600):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    owner.sent_bytes += 1
                    time.sleep(owner.trickle_s)

            def _trickle_headers(self, body: dict) -> None:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(600):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    owner.sent_bytes += 1
                    time.sleep(owner.trickle_s)

            def _nested(self, body: dict) -> None:
                deep = ('{"choices": ' + "[" * owner.depth + "]" * owner.depth + "}").encode()
                if body.get("stream"):
                    return self._send(200, "text/event-stream", b"data: " + deep + b"\n\ndata: [DONE]\n\n")
                self._send(200, "application/json", deep)

            def _raw(self, body: dict) -> None:
                kind = "text/event-stream" if body.get("stream") else "application/json"
                self._send(200, kind, owner.reply(body).encode())

            def _redirect(self, body: dict) -> None:
                self.send_response(307)
                self.send_header("Location", owner.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, code: int, content_type: str, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


HOSTILE = ("flood", "trickle", "trickle-headers", "nested", "redirect", "raw")
ENDPOINTS_ENV = "RECSYS_LLM_ENDPOINTS"


def _listed() -> list[dict]:
    raw = os.environ.get(ENDPOINTS_ENV, "").strip()
    return json.loads(raw) if raw.startswith("[") else []


class ConnectionRecorder:
    """A listening socket on 127.0.0.1 that accepts and counts every connection (and answers nothing): a
    test proves that no connection was made by reading `connections` afterwards."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
