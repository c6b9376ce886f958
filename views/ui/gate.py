"""The gate on every door: with `RECSYS_PASSWORD` set, nothing of the server answers before sign-in.

Why here: a pure ASGI middleware handed to `st.App` (`app.py`) runs before Streamlit's own routes on every
scope, HTTP and websocket alike, so one check covers the page HTML, the static files, the websocket
(`/_stcore/stream`, where every script run happens) and the upload endpoint (`/_stcore/upload_file`), whose
body is never read for a refused request. The earlier in-page password form ran inside a session, that is,
after the websocket had been opened and uploads were possible; Streamlit's native `st.login` needs an OIDC
provider, which a team box with one shared password does not have; a reverse proxy would be a second program
to configure and test. `tests/test_e2e_gate.py` checks every door on the real server.

- Sign-in is a small server-rendered form (`/_gate/signin`, everything escaped). A right password sets a
  signed session cookie (HMAC-SHA256 over the expiry and a nonce, with a key derived from the server secret
  and the password: changing either signs everyone out), `HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS,
  valid for `RECSYS_SESSION_HOURS` (12). The secret is `RECSYS_SESSION_SECRET`, else random per process (a
  restart then asks again).
- Wrong passwords back off exponentially, per client address and globally (across all clients, so many
  parallel clients cannot multiply the rate); an attempt inside a wait is answered 429 without being
  checked. Every failure is logged (logger `recsys.gate` and `gate-failures.log` in the workspace, rotated
  at 1 MB).
- A page link opened before sign-in (`/recommend?run=...`) goes to the form with `next=`, and back there
  after sign-in; `next` must be a same-site relative path. A link followed from another site arrives
  without the SameSite=Strict cookie: the form's one script (allowed by its hash) asks `/_gate/status` from
  this origin and goes on to `next` when the browser is signed in. `/_gate/signout` ends the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

PASSWORD_ENV = "RECSYS_PASSWORD"
SECRET_ENV = "RECSYS_SESSION_SECRET"
HOURS_ENV = "RECSYS_SESSION_HOURS"
COOKIE = "recsys_session"
SIGNIN = "/_gate/signin"
SIGNOUT = "/_gate/signout"
STATUS = "/_gate/status"
OPEN_PATHS = ("/_stcore/health",)  # a load balancer's or Docker's health check; says nothing but "ok"
MAX_FORM_BYTES = 8192
MAX_CLIENTS = 10_000  # per-address backoff entries kept (oldest dropped first)
_LOG = logging.getLogger("recsys.gate")


def password() -> str:
    """The operator's shared password; empty when the server is open (a local single-user app)."""
    return os.environ.get(PASSWORD_ENV, "")


@dataclass
class Backoff:
    """Exponential backoff over failures: after the n-th failure in a row, wait base * 2**(n-1), at most
    `cap_s`. A failure after `quiet_s` without one starts the count again."""

    base_s: float
    cap_s: float
    quiet_s: float
    failures: int = 0
    last: float = float("-inf")
    until: float = float("-inf")

    def wait(self, now: float) -> float:
        """Seconds until the next attempt is checked (0: now)."""
        return max(0.0, self.until - now)

    def fail(self, now: float) -> None:
        self.failures = 1 if now - self.last > self.quiet_s else self.failures + 1
        self.last = now
        self.until = now + min(self.cap_s, self.base_s * 2 ** min(self.failures - 1, 60))


class Limiter:
    """The global backoff and one per client address (bounded table), checked together."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.everyone = Backoff(base_s=0.5, cap_s=30.0, quiet_s=900.0)
        self.clients: OrderedDict[str, Backoff] = OrderedDict()

    def wait(self, client: str) -> float:
        now = self.clock()
        own = self.clients.get(client)
        return max(self.everyone.wait(now), own.wait(now) if own else 0.0)

    def failed(self, client: str) -> tuple[int, int]:
        """Count a failure; returns (this client's failures in a row, everyone's)."""
        now = self.clock()
        own = self.clients.pop(client, None) or Backoff(base_s=1.0, cap_s=900.0, quiet_s=3600.0)
        own.fail(now)
        self.clients[client] = own
        while len(self.clients) > MAX_CLIENTS:
            self.clients.popitem(last=False)
        self.everyone.fail(now)
        return own.failures, self.everyone.failures

    def succeeded(self, client: str) -> None:
        self.clients.pop(client, None)


class Sessions:
    """Signed session tokens `expiry.nonce.signature`; sign-out revokes a nonce until its expiry."""

    def __init__(self, secret: bytes, pass_word: str, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = hmac.new(secret, b"recsys-gate\0" + pass_word.encode(), hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self.clock = clock
        self.revoked: dict[str, float] = {}

    def _sign(self, body: str) -> str:
        return hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        body = f"{int(self.clock() + self.ttl_s)}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, token: str | None) -> bool:
        parts = (token or "").split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        body = f"{parts[0]}.{parts[1]}"
        return (hmac.compare_digest(self._sign(body), parts[2]) and int(parts[0]) > self.clock()
                and parts[1] not in self.revoked)

    def revoke(self, token: str | None) -> None:
        if self.valid(token):
            expiry, nonce, _ = (token or "").split(".")
            now = self.clock()
            self.revoked = {n: t for n, t in self.revoked.items() if t > now}  # forget expired ones
            if len(self.revoked) < MAX_CLIENTS:
                self.revoked[nonce] = float(expiry)


def safe_next(raw: str | None, prefix: str = "") -> str:
    """`raw` when it is a same-site relative path of this app (not the gate's own), else the home page."""
    home = prefix + "/"
    if not raw or len(raw) > 2000 or any(ord(c) < 0x20 or c in "\\\x7f" for c in raw):
        return home
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not raw.startswith(home) or raw.startswith("//"):
        return home
    if parts.path.startswith(prefix + "/_gate/"):
        return home
    return raw


def _session_hours() -> float:
    """`RECSYS_SESSION_HOURS` (12 when unset; a value that is not a positive number is logged and ignored)."""
    raw = os.environ.get(HOURS_ENV, "")
    try:
        hours = float(raw or 12)
    except ValueError:
        hours = -1.0
    if not 0 < hours < 24 * 366:
        _LOG.warning("%s=%r is not a number of hours; sessions last 12 hours", HOURS_ENV, raw)
        hours = 12.0
    return hours


def _cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                key, _, val = pair.strip().partition("=")
                found.setdefault(key, val)
    return found


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k == name), "")


def _failure_log(workspace: Path) -> logging.Handler | None:
    """A rotated file of failed sign-ins in the workspace (1 MB and one older file), or None if unwritable."""
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(workspace / "gate-failures.log", maxBytes=2**20, backupCount=1)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


# A link followed from another site (mail, chat) arrives without the SameSite=Strict cookie, so a signed-in
# colleague would meet the form. The page asks, from its own origin (the cookie goes along), whether this
# browser is signed in, and if so goes on to `next`. The script is fixed text, allowed by its hash alone.
_RESUME = ('fetch("status",{credentials:"same-origin"}).then(function(r){if(r.status===204)'
           '{location.replace(document.getElementById("next").value)}})')
_RESUME_HASH = base64.b64encode(hashlib.sha256(_RESUME.encode()).digest()).decode()
_CSP = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_RESUME_HASH}'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'").encode()
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>RecSys Explorer: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>
body{{font-family:system-ui,sans-serif;background:#F3F6FA;color:#1F2937;display:flex;justify-content:center;
margin:0;padding-top:12vh}}main{{background:#fff;padding:2rem 2.5rem;border-radius:.75rem;width:22rem;
box-shadow:0 1px 4px #0002}}h1{{font-size:1.5rem;margin:0 0 .5rem}}p{{color:#4B5563}}
input{{width:100%;box-sizing:border-box;padding:.55rem;margin:.4rem 0 1rem;font-size:1rem}}
button{{background:#2E91E5;color:#fff;border:0;border-radius:.4rem;padding:.55rem 1.2rem;font-size:1rem}}
.err{{color:#B91C1C}}</style></head><body><main><h1>RecSys Explorer</h1>
<p>This server is shared: enter the password its operator gave you.</p>{message}
<form method="post" action="{action}"><input type="hidden" id="next" name="next" value="{next}">
<label for="password">Password</label><input id="password" name="password" type="password" autofocus
autocomplete="current-password" required><button type="submit">Sign in</button></form></main>
<script>{script}</script></body></html>"""


class Gate:
    """Pure ASGI middleware: every HTTP request and websocket goes through `__call__`."""

    def __init__(self, app, pass_word: str = "", secret: bytes | None = None, ttl_s: float | None = None,
                 prefix: str = "", workspace: Path | None = None) -> None:
        self.app = app
        self.password = pass_word or password()
        env_secret = os.environ.get(SECRET_ENV, "")
        self.sessions = Sessions(secret or env_secret.encode() or secrets.token_bytes(32), self.password,
                                 ttl_s or _session_hours() * 3600)
        self.limiter = Limiter()
        self.prefix = prefix.rstrip("/")
        self.log_file = _failure_log(workspace or Path(os.environ.get("RECSYS_WORKSPACE") or "workspace"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.password:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == self.prefix + SIGNIN and scope["type"] == "http":
            await self._signin(scope, receive, send)
        elif path == self.prefix + SIGNOUT and scope["type"] == "http":
            self.sessions.revoke(_cookies(scope["headers"]).get(COOKIE))
            await self._respond(send, 303, b"", [(b"location", self._signin_url("/").encode()),
                                                 (b"set-cookie", self._cookie("", 0))])
        elif path == self.prefix + STATUS and scope["type"] == "http":
            signed_in = self.sessions.valid(_cookies(scope["headers"]).get(COOKIE))
            await self._respond(send, 204 if signed_in else 401, b"", [])
        elif self.sessions.valid(_cookies(scope["headers"]).get(COOKIE)) or path in self._open_paths():
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets 403
        elif scope["method"] in ("GET", "HEAD") and not path.startswith(self._internal()):
            query = scope.get("query_string", b"").decode("latin-1")
            await self._respond(send, 303, b"", [(b"location", self._signin_url(path + ("?" + query if query
                                                                                         else "")).encode())])
        else:  # uploads, static files, anything else: refused, the body left unread
            await self._respond(send, 401, b"Sign in first.\n", [(b"content-type", b"text/plain")])

    def _open_paths(self) -> tuple[str, ...]:
        return tuple(self.prefix + p for p in OPEN_PATHS)

    def _internal(self) -> tuple[str, ...]:
        return tuple(self.prefix + p for p in ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/"))

    def _signin_url(self, next_path: str) -> str:
        return f"{self.prefix}{SIGNIN}?next={quote(safe_next(next_path, self.prefix), safe='')}"

    def _cookie(self, value: str, max_age: int, secure: bool = False) -> bytes:
        flags = f"; Path={self.prefix or '/'}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={value}{flags}{'; Secure' if secure else ''}".encode()

    async def _respond(self, send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                   (b"x-recsys-gate", b"1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _page(self, send, status: int, next_path: str, message: str = "",
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        note = f'<p class="err" role="alert">{html.escape(message)}</p>' if message else ""
        body = _PAGE.format(message=note, action=html.escape(self.prefix + SIGNIN), script=_RESUME,
                            next=html.escape(safe_next(next_path, self.prefix))).encode()
        await self._respond(send, status, body, [
            (b"content-type", b"text/html; charset=utf-8"), (b"x-frame-options", b"DENY"),
            (b"content-security-policy", _CSP),
            *(extra or [])])

    async def _signin(self, scope, receive, send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["method"] != "POST":
            next_path = query.get("next", ["/"])[0]
            if self.sessions.valid(_cookies(scope["headers"]).get(COOKIE)):  # signed in already: go on
                await self._respond(send, 303, b"", [(b"location", safe_next(next_path, self.prefix).encode())])
            else:
                await self._page(send, 200, next_path)
            return
        origin = _header(scope["headers"], b"origin")
        if origin and urlsplit(origin).netloc != _header(scope["headers"], b"host"):
            await self._respond(send, 403, b"Cross-site sign-in refused.\n", [(b"content-type", b"text/plain")])
            return
        form = await _read_form(receive)
        if form is None:
            await self._respond(send, 413, b"Form too large.\n", [(b"content-type", b"text/plain")])
            return
        next_path = form.get("next", ["/"])[0]
        client = (scope.get("client") or ("unknown", 0))[0]
        # From here to the answer nothing awaits: the check and the count are one step for the event loop.
        wait = self.limiter.wait(client)
        if wait > 0:
            await self._page(send, 429, next_path, f"Too many failed sign-ins. Try again in {math.ceil(wait)} s.",
                             [(b"retry-after", str(math.ceil(wait)).encode())])
            return
        typed = form.get("password", [""])[0]
        if hmac.compare_digest(hashlib.sha256(typed.encode()).digest(),
                               hashlib.sha256(self.password.encode()).digest()):
            self.limiter.succeeded(client)
            secure = scope.get("scheme") == "https" or _header(scope["headers"], b"x-forwarded-proto") == "https"
            cookie = self._cookie(self.sessions.issue(), int(self.sessions.ttl_s), secure)
            await self._respond(send, 303, b"", [(b"location", safe_next(next_path, self.prefix).encode()),
                                                 (b"set-cookie", cookie)])
            return
        mine, everyone = self.limiter.failed(client)
        self._log_failure(client, mine, everyone)
        await self._page(send, 401, next_path, "Wrong password. Ask the operator of this server for it.")

    def _log_failure(self, client: str, mine: int, everyone: int) -> None:
        line = f"failed sign-in from {client!r}: {mine} in a row from it, {everyone} in a row from everyone"
        _LOG.warning(line)
        if self.log_file is not None:
            self.log_file.emit(logging.makeLogRecord({"msg": line, "levelno": logging.WARNING}))


async def _read_form(receive) -> dict[str, list[str]] | None:
    """The url-encoded form of a request, or None when it passes MAX_FORM_BYTES (reading stops there)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not message.get("more_body"):
            return parse_qs(body.decode("utf-8", "replace"))


def middleware() -> list:
    """The middleware `st.App` gets: the gate when `RECSYS_PASSWORD` is set, else none (nothing changes)."""
    if not password():
        return []
    from starlette.middleware import Middleware
    from streamlit import config

    prefix = "/" + config.get_option("server.baseUrlPath").strip("/") if config.get_option("server.baseUrlPath") else ""
    return [Middleware(Gate, prefix=prefix.rstrip("/"))]
