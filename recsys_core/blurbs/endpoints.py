"""The LLM servers this server may talk to: chosen by the operator only, picked by visitors by name.

`RECSYS_LLM_ENDPOINTS` holds a JSON list, or the path of a JSON file holding one, of OpenAI-compatible
chat servers:

    [{"name": "ollama", "url": "http://127.0.0.1:11434", "model": "llama3.2"},
     {"name": "vllm", "url": "https://llm.internal:8000/v1", "model": "Qwen2.5-7B-Instruct",
      "key_env": "VLLM_API_KEY", "timeout_s": 60}]

`name` is what visitors see (the URL is never shown), `key_env` names the environment variable that holds
the server's API key (the key itself never sits in the list), `timeout_s` bounds a whole request, from
connecting to the last byte (default 60). The older single-server settings still work: `RECSYS_LLM_URL`
(+ `RECSYS_LLM_MODEL`, `RECSYS_LLM_API_KEY`) adds an endpoint named "default".

`remote.OpenAIBackend` refuses, before connecting, any URL that is not one of these: a page, the CLI or a
caller of the engine cannot point the server anywhere else. Every problem with the list is an `LLMError`
naming the variable and what to fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from recsys_core.errors import LLMError

ENV_ENDPOINTS = "RECSYS_LLM_ENDPOINTS"
ENV_URL, ENV_MODEL, ENV_KEY = "RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY"
LEGACY_NAME = "default"
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:@-]{0,63}")
_KEY_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FIELDS = {"name", "url", "model", "key_env", "timeout_s"}
_EXAMPLE = ('[{"name": "ollama", "url": "http://127.0.0.1:11434", "model": "llama3.2"}] (README, "LLM blurbs")')


@dataclass(frozen=True)
class Endpoint:
    """One operator-configured chat server."""

    name: str
    url: str  # the full .../v1/chat/completions URL
    model: str
    key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def api_key(self) -> str | None:
        """The key from the operator's environment variable, read when a request is made (never stored)."""
        return (os.environ.get(self.key_env) or None) if self.key_env else None


def chat_endpoint(url: str) -> str:
    """`.../v1/chat/completions` for a server base URL given with or without `/v1` (http/https only)."""
    url = url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # reading .port raises on a port that is not a number
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password:
        raise LLMError("the server URL must start with http:// or https:// and name a host (and a port number, "
                       f"no user:password@), got {url[:200]!r}", hint="give the server's base URL, e.g. http://127.0.0.1:11434 for Ollama")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def operator_endpoints() -> dict[str, Endpoint]:
    """The operator's endpoints by name, in the order given (the legacy `RECSYS_LLM_URL` one last)."""
    found: dict[str, Endpoint] = {}
    for entry in _listed():
        endpoint = _endpoint(entry)
        if endpoint.name in found:
            raise _bad(f"the endpoint name {endpoint.name!r} is used twice", "give every endpoint its own name")
        found[endpoint.name] = endpoint
    legacy = os.environ.get(ENV_URL, "").strip()
    if legacy and LEGACY_NAME not in found:
        found[LEGACY_NAME] = Endpoint(LEGACY_NAME, chat_endpoint(legacy), os.environ.get(ENV_MODEL, "").strip(),
                                      ENV_KEY)
    return found


def endpoint_for_url(url: str) -> Endpoint | None:
    """The operator's endpoint at `url` (compared as chat-completions URLs), or None: not a server we may call."""
    target = chat_endpoint(url)
    return next((e for e in operator_endpoints().values() if e.url == target), None)


def _bad(problem: str, hint: str) -> LLMError:
    return LLMError(f"{ENV_ENDPOINTS}: {problem}", hint=f"{hint}; the operator sets it, e.g. {_EXAMPLE}")


def _listed() -> list:
    raw = os.environ.get(ENV_ENDPOINTS, "").strip()
    if not raw:
        return []
    text = raw
    if not raw.startswith(("[", "{")):  # the path of a JSON file
        try:
            path = Path(raw).expanduser()
            if path.stat().st_size > 1 << 20:
                raise _bad("the endpoints file is over 1 MB", "list a few servers")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise _bad("is neither a JSON list nor a readable JSON file", "give the list itself, or the path of a "
                       "UTF-8 JSON file holding it") from err
    try:
        listed = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise _bad("is not valid JSON", "write a JSON list of objects") from err
    if not isinstance(listed, list):
        raise _bad("is not a JSON list", "write a list of objects, one per server")
    return listed


def _endpoint(entry: object) -> Endpoint:
    if not isinstance(entry, dict):
        raise _bad("every entry must be an object", "write {\"name\": ..., \"url\": ..., \"model\": ...}")
    unknown = sorted(str(k) for k in entry if k not in _FIELDS)
    if unknown:
        raise _bad(f"unknown field(s) {unknown}", f"the fields are {sorted(_FIELDS)}")
    name, url, model = entry.get("name"), entry.get("url"), entry.get("model")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad(f"the name {name!r} is missing or not a short plain name",
                   "name each endpoint with letters, digits, spaces and _.:@- (up to 64 characters)")
    if not isinstance(url, str) or not isinstance(model, str) or not model.strip():
        raise _bad(f"endpoint {name!r} needs a \"url\" and a \"model\" (text)", "add both")
    key_env = entry.get("key_env")
    if key_env is not None and (not isinstance(key_env, str) or not _KEY_ENV.fullmatch(key_env)):
        raise _bad(f"endpoint {name!r}: \"key_env\" must name an environment variable",
                   "give the variable's name (e.g. VLLM_API_KEY), never the key itself")
    timeout = entry.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or not 0 < timeout <= MAX_TIMEOUT_S:
        raise _bad(f"endpoint {name!r}: \"timeout_s\" must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]",
                   "give the longest a whole reply may take, e.g. 60")
    try:
        chat = chat_endpoint(url)
    except LLMError as err:
        raise _bad(f"endpoint {name!r}: {err.message}", err.hint or "fix the URL") from err
    return Endpoint(name, chat, model.strip(), key_env, float(timeout))
