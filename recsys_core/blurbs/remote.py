"""`OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` server (Ollama, vLLM, llama.cpp server),
streaming (server-sent events) or not, standard library only. The operator's API key goes only to the
server the operator configured; a server's own error text is never echoed to the page."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Iterator, Sequence

from recsys_core.blurbs.backend import Backend, GenerationStats, Message
from recsys_core.blurbs.constrain import Guide
from recsys_core.errors import LLMError

ENV_URL, ENV_MODEL, ENV_KEY = "RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY"
MAX_REPLY_BYTES = 1 << 20  # a chat reply of a few sentences is a few KB; more is not a chat server
_CHAT_ENDPOINT = "is the URL an OpenAI-compatible /v1/chat/completions endpoint (e.g. http://127.0.0.1:11434 " \
                 "for Ollama)?"


def chat_endpoint(url: str) -> str:
    """`.../v1/chat/completions` for a server base URL given with or without `/v1` (http/https only)."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LLMError(f"the server URL must start with http:// or https:// and name a host, got {url!r}",
                       hint="give the server's base URL, e.g. http://127.0.0.1:11434 for Ollama")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def operator_key_for(url: str) -> str | None:
    """The server's own key (`RECSYS_LLM_API_KEY`), only for the endpoint the operator configured
    (`RECSYS_LLM_URL`): a URL typed by a visitor never receives the server's secret."""
    key, configured = os.environ.get(ENV_KEY), os.environ.get(ENV_URL)
    if not key or not configured:
        return None
    try:
        return key if chat_endpoint(url) == chat_endpoint(configured) else None
    except LLMError:
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would forward the Authorization header to wherever a server redirects: refuse instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise LLMError(f"the LLM server answered HTTP {code} (a redirect)", hint="give the server's final URL instead")


_OPENER = urllib.request.build_opener(_NoRedirect)


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat-completions server; the API key is sent, never shown or logged.

    A `Guide` is not sent: the chat protocol has no portable way to pre-write a reply or constrain it,
    so replies from a server rely on the prompt and the grounding check alone. Nothing to load: "ready".
    """

    supports_guide = False

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.endpoint = chat_endpoint(url)
        if not model.strip():
            raise LLMError("no model name for the LLM server",
                           hint="name the model the server should run (e.g. `llama3.2` for Ollama)")
        self.model, self.api_key, self.timeout_s = model.strip(), api_key or None, float(timeout_s)
        super().__init__(f"openai:{self.model}@{self.endpoint}", self.model)

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 30.0) -> OpenAIBackend:
        """Arguments first, then RECSYS_LLM_URL / RECSYS_LLM_MODEL; RECSYS_LLM_API_KEY only for RECSYS_LLM_URL."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise LLMError("no LLM server URL",
                           hint=f"give one or set {ENV_URL} (e.g. http://127.0.0.1:11434 for Ollama)")
        return cls(url, model or os.environ.get(ENV_MODEL, ""), api_key or operator_key_for(url), timeout_s)

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Generator[str, None, None]:
        body = {"model": self.model, "messages": list(messages), "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "stream": bool(stream)}
        self.last_stats = stats = GenerationStats()
        return self._run(body, stream, stats)

    def _request(self, body: dict) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")

    def _run(self, body: dict, stream: bool, stats: GenerationStats) -> Generator[str, None, None]:
        start = time.perf_counter()
        deadline = start + self.timeout_s * (4 if stream else 1)  # a stream may take longer than one read
        try:
            with _OPENER.open(self._request(body), timeout=self.timeout_s) as resp:
                chunks = _sse_chunks(resp, deadline, self.timeout_s) if stream else _whole_reply(resp)
                for chunk in chunks:
                    if chunk:
                        stats.tokens += 1  # one delta is about one token on the servers we target
                        if stats.first_chunk_s is None:
                            stats.first_chunk_s = time.perf_counter() - start
                        yield chunk
        except LLMError:
            raise
        except urllib.error.HTTPError as err:
            # A status line only: the body of an arbitrary server is never echoed to the page.
            raise LLMError(f"the LLM server at {self.endpoint} answered HTTP {err.code} {err.reason}",
                           hint="check the model name and the server's own log") from err
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as err:
            raise self._unreachable(err) from err
        finally:
            stats.total_s = time.perf_counter() - start

    def _unreachable(self, err: Exception) -> LLMError:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(reason, TimeoutError):
            return LLMError(f"no answer from the LLM server at {self.endpoint} within {self.timeout_s:g} s",
                            hint="is the model still loading? wait, or raise the timeout")
        if isinstance(err, urllib.error.URLError):
            return LLMError(f"could not reach the LLM server at {self.endpoint}: {_reason(reason)}",
                            hint="check the URL, and that the server is running and reachable from this machine")
        return LLMError(f"the connection to the LLM server at {self.endpoint} failed: {_reason(err)}",
                        hint="try again; if it keeps failing, check the server's own log")


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that host and port?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def _bad_json(text: str) -> LLMError:
    return LLMError(f"the LLM server sent a reply that is not valid JSON ({len(text):,} characters)",
                    hint=_CHAT_ENDPOINT)


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


def _too_long(what: str) -> LLMError:
    return LLMError(f"the LLM server {what} over {MAX_REPLY_BYTES >> 20} MB; a chat reply is a few KB",
                    hint=f"lower the reply length on the server; {_CHAT_ENDPOINT}")


def _whole_reply(resp) -> Iterator[str]:
    data = resp.read(MAX_REPLY_BYTES + 1)
    if len(data) > MAX_REPLY_BYTES:
        raise _too_long("sent a reply")
    text = data.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad_json(text) from err
    yield _content(payload, streaming=False)


def _sse_chunks(resp, deadline: float, timeout_s: float) -> Iterator[str]:
    """Deltas of a server-sent-events stream (`data: {...}` lines, ended by `data: [DONE]`)."""
    received = 0
    for raw in resp:
        received += len(raw)
        if received > MAX_REPLY_BYTES:
            raise _too_long("streamed")
        if time.perf_counter() > deadline:
            raise LLMError(f"the LLM server kept streaming for more than {4 * timeout_s:g} s",
                           hint="raise the timeout, or ask the server for shorter replies")
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue  # blank separators, comments and event/id fields carry no text
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as err:
            raise _bad_json(data) from err
        yield _content(payload, streaming=True)
