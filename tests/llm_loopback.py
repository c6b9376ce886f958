"""A small real OpenAI-compatible chat-completions server on 127.0.0.1, for backend and page tests.

`LoopbackLLM` runs `http.server` in a thread. Its `reply(request_body) -> str` decides the text; `mode`
picks the behaviour: "ok" (SSE when the request asks for `stream`, else one JSON reply), "sleep"
(answers after `sleep_s`), "500", "bad-json". `word_delay_s` paces a streamed reply word by word, so a
test can look at a page while a draft is being written. Every request body and its headers are recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackLLM:
    def __init__(self, reply: Callable[[dict], str] | str = "Hello there.", mode: str = "ok",
                 sleep_s: float = 3.0, word_delay_s: float = 0.0) -> None:
        self.reply = reply if callable(reply) else (lambda body, text=reply: text)
        self.mode, self.sleep_s, self.word_delay_s = mode, sleep_s, word_delay_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
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

            def _send(self, code: int, content_type: str, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
