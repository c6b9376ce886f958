"""The gate (`views/ui/gate.py`) as a pure ASGI app in this process, and the pages' error boundary.

The real server with every door is `tests/test_e2e_gate.py`; here each rule is checked with a clock and
an app behind the gate that records whether it was reached.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tomllib
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from views.ui import gate
from views.ui.gate import COOKIE, Gate, Limiter, Sessions, safe_next

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Inner:
    """The app behind the gate: records the scopes that reached it."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        self.reached.append(scope["path"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"app"})


def call(app, path: str, method: str = "GET", body: bytes = b"", cookie: str = "", kind: str = "http",
         client: str = "10.0.0.1", headers: tuple = ()) -> tuple[int, dict[str, str], bytes, int]:
    """One request through `app`: (status or websocket close code, headers, body, body chunks read)."""
    target = urlsplit(path)
    scope = {"type": kind, "path": target.path, "query_string": target.query.encode(), "method": method,
             "client": (client, 5000), "scheme": "http",
             "headers": [(b"host", b"box:8501"), *((b"cookie", f"{COOKIE}={cookie}".encode()),) * bool(cookie),
                         *headers]}
    chunks = [{"type": "http.request", "body": body[i:i + 1000], "more_body": i + 1000 < len(body)}
              for i in range(0, max(len(body), 1), 1000)]
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        read += 1
        return chunks[read - 1] if read <= len(chunks) else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if kind == "websocket":
        closed = [m for m in sent if m["type"] == "websocket.close"]  # Inner accepts a websocket silently
        return closed[0]["code"] if closed else 0, {}, b"", read
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body_out, read


def make_gate(tmp_path: Path, clock: Clock | None = None) -> tuple[Gate, Inner]:
    inner = Inner()
    g = Gate(inner, pass_word="open sesame", secret=b"s" * 32, ttl_s=3600, workspace=tmp_path)
    if clock:
        g.limiter.clock = clock
    return g, inner


def sign_in(g: Gate, password: str = "open sesame", next_path: str = "/", client: str = "10.0.0.1"):
    return call(g, "/_gate/signin", "POST", urlencode({"password": password, "next": next_path}).encode(),
                client=client)


def token_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_every_door_is_shut_before_sign_in(tmp_path) -> None:
    g, inner = make_gate(tmp_path)
    status, headers, _, _ = call(g, "/recommend?run=run-1&user=42")
    assert status == 303 and headers["location"] == "/_gate/signin?next=%2Frecommend%3Frun%3Drun-1%26user%3D42"
    big = b"x" * 50_000
    status, headers, _, read = call(g, "/_stcore/upload_file/sess/file", "PUT", big)
    assert status == 401 and headers["x-recsys-gate"] == "1" and read == 0  # the body was never read
    assert call(g, "/_stcore/stream", kind="websocket")[0] == 1008  # closed before accept: a 403 handshake
    assert call(g, "/static/js/index.js")[0] == 401 and call(g, "/_stcore/host-config")[0] == 401
    assert call(g, "/_stcore/health")[0] == 200 and inner.reached == ["/_stcore/health"]


def test_the_right_password_opens_every_door_until_the_session_ends(tmp_path) -> None:
    g, inner = make_gate(tmp_path)
    status, headers, _, _ = sign_in(g, next_path="/recommend?run=run-1")
    assert status == 303 and headers["location"] == "/recommend?run=run-1"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=3600" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; HTTPS (or a proxy saying so) adds it
    token = token_of(headers)
    assert call(g, "/recommend", cookie=token)[0] == 200
    assert call(g, "/_stcore/upload_file/s/f", "PUT", b"data", cookie=token)[0] == 200
    assert call(g, "/_stcore/stream", kind="websocket", cookie=token)[0] == 0
    assert inner.reached == ["/recommend", "/_stcore/upload_file/s/f", "/_stcore/stream"]
    assert call(g, "/_gate/signin?next=/data", cookie=token)[1]["location"] == "/data"  # signed in: go on
    assert call(g, "/_gate/status", cookie=token)[0] == 204 and call(g, "/_gate/status")[0] == 401
    status, headers, _, _ = call(g, "/_gate/signout", cookie=token)
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]
    assert call(g, "/recommend", cookie=token)[0] == 303  # the old cookie is revoked, not only forgotten
    assert call(g, "/recommend", "POST", b"password=open+sesame")[0] == 401  # only the sign-in form signs in
    https = ((b"x-forwarded-proto", b"https"),)
    assert "; Secure" in call(g, "/_gate/signin", "POST", b"password=open+sesame", headers=https)[1]["set-cookie"]


def test_tampered_expired_and_foreign_cookies_are_refused() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, "pw", ttl_s=60, clock=clock)
    token = sessions.issue()
    expiry, nonce, sig = token.split(".")
    assert sessions.valid(token)
    assert not sessions.valid(f"{int(expiry) + 3600}.{nonce}.{sig}")  # a longer life, same signature
    assert not sessions.valid(f"{expiry}.{nonce}.{sig[:-1]}{'0' if sig[-1] != '0' else '1'}")
    assert not sessions.valid("") and not sessions.valid("a.b") and not sessions.valid("x.y.z")
    assert not Sessions(b"k" * 32, "new password", 60, clock).valid(token)  # a new password signs all out
    assert not Sessions(b"other" * 8, "pw", 60, clock).valid(token)  # so does a new secret
    clock.now += 61
    assert not sessions.valid(token)


@pytest.mark.parametrize("raw", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "\\\\evil",
                                 "javascript:alert(1)", "recommend", "/ok\r\nSet-Cookie: a=b", "/_gate/signout",
                                 "", None, "/" + "a" * 3000])
def test_next_is_a_relative_path_of_this_app_or_home(raw) -> None:
    assert safe_next(raw) == "/"


def test_next_keeps_a_page_and_its_query() -> None:
    assert safe_next("/recommend?run=run-1&user=42") == "/recommend?run=run-1&user=42"
    assert safe_next("/base/recommend?x=1", "/base") == "/base/recommend?x=1"
    assert safe_next("/recommend", "/base") == "/base/"


def test_an_open_redirect_is_refused_at_sign_in_and_the_form_escapes_it(tmp_path) -> None:
    g, _ = make_gate(tmp_path)
    assert sign_in(g, next_path="//evil.example/")[1]["location"] == "/"
    status, headers, body, _ = call(g, "/_gate/signin?next=" + '/x"><script>alert(1)</script>')
    assert status == 200 and b"<script>alert" not in body and b"&lt;script&gt;alert(1)" in body
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    script = body.split(b"<script>")[1].split(b"</script>")[0]  # the one script the page may run: by its hash
    assert f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'" in csp
    status, _, body, _ = call(g, "/_gate/signin", "POST", b"password=" + b"x" * 9000)
    assert status == 413
    foreign = ((b"origin", b"https://evil.example"),)
    assert call(g, "/_gate/signin", "POST", b"password=open+sesame", headers=foreign)[0] == 403


def test_wrong_passwords_back_off_per_client_and_globally_and_are_logged(tmp_path) -> None:
    clock = Clock()
    g, _ = make_gate(tmp_path, clock)
    status, _, body, _ = sign_in(g, "guess-1")
    assert status == 401 and b"Wrong password" in body
    status, headers, body, _ = sign_in(g, "open sesame")  # even the right one waits its turn
    assert status == 429 and headers["retry-after"] == "1" and b"Too many" in body
    waits = []
    for i in range(6):  # one client, each try after its wait: 1, 2, 4, 8, 16, 32 s
        waits.append(g.limiter.wait("10.0.0.1"))
        clock.now += waits[-1]
        assert sign_in(g, f"guess-{i}")[0] == 401
    assert waits == [1, 2, 4, 8, 16, 32]
    log = (tmp_path / "gate-failures.log").read_text().splitlines()
    assert len(log) == 7 and "failed sign-in from '10.0.0.1': 7 in a row" in log[-1]
    assert "guess" not in "".join(log)  # what was typed is never written down

    clock.now += 3600 * 2  # quiet for two hours: both counts start again
    waits = []
    for n in range(20):  # 20 addresses, one guess each: the global wait doubles to its 30 s cap
        waits.append(g.limiter.wait(f"10.0.1.{n}"))
        clock.now += waits[-1]
        assert sign_in(g, "guess", client=f"10.0.1.{n}")[0] == 401
    assert waits[:7] == [0, 0.5, 1, 2, 4, 8, 16] and set(waits[7:]) == {30}
    assert g.limiter.wait("10.0.2.1") == 30  # a new address waits with everyone
    assert sign_in(g, client="10.0.2.1")[0] == 429


def test_the_per_client_table_is_bounded() -> None:
    limiter = Limiter(Clock())
    for n in range(gate.MAX_CLIENTS + 50):
        limiter.failed(f"c{n}")
    assert len(limiter.clients) == gate.MAX_CLIENTS and "c0" not in limiter.clients


def test_without_a_password_nothing_changes(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(gate.PASSWORD_ENV, raising=False)
    assert gate.middleware() == []
    inner = Inner()
    open_gate = Gate(inner, workspace=tmp_path)
    assert call(open_gate, "/_stcore/upload_file/s/f", "PUT", b"x")[0] == 200
    assert call(open_gate, "/_stcore/stream", kind="websocket")[0] == 0 and len(inner.reached) == 2
    monkeypatch.setenv(gate.PASSWORD_ENV, "pw")
    assert len(gate.middleware()) == 1


def test_error_details_are_off_for_visitors() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"


def _home_with(monkeypatch, tmp_path, error: Exception):
    from streamlit.testing.v1 import AppTest

    from views.ui import common

    def broken(record):
        raise error

    monkeypatch.setenv("RECSYS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr(common, "dataset_stats", broken)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()


def test_an_unexpected_error_shows_an_incident_id_and_no_traceback_or_path(monkeypatch, tmp_path, caplog) -> None:
    secret_path = "/srv/recsys/private/workspace/datasets/demo/part-0.parquet"
    at = _home_with(monkeypatch, tmp_path, KeyError(secret_path))
    assert not at.exception  # nothing reached Streamlit's own exception box
    shown = " ".join(e.value for e in at.error)
    assert "Something went wrong on the server" in shown and "incident" in shown
    incident = shown.split("incident `")[1].split("`")[0]
    text = " ".join(str(el.value) for el in [*at.markdown, *at.error, *at.caption])
    assert secret_path not in text and "Traceback" not in text and "KeyError" not in text
    assert f"incident {incident}" in caplog.text and secret_path in caplog.text  # the server log has it all


def test_a_recsys_error_shows_its_message_and_what_to_do(monkeypatch, tmp_path) -> None:
    from recsys_core.errors import DataError

    where = tmp_path / "ws" / "datasets" / "mine" / "part-0.parquet"
    at = _home_with(monkeypatch, tmp_path, DataError("the saved dataset is unreadable", file=str(where),
                                                     hint=f"load it again (not from {ROOT}/x.csv)"))
    assert not at.exception
    shown = at.error[0].value
    assert "the saved dataset is unreadable" in shown and "load it again" in shown and "incident" not in shown
    assert str(tmp_path) not in shown and str(ROOT) not in shown  # the server's folders are never named
    assert "workspace/datasets/mine/part" in shown.replace("\\", "")


def test_a_query_in_a_next_link_survives_the_form(tmp_path) -> None:
    g, _ = make_gate(tmp_path)
    _, _, body, _ = call(g, "/_gate/signin?" + urlencode({"next": "/explain?run=r&item=7"}))
    assert b'value="/explain?run=r&amp;item=7"' in body  # the browser posts it back unescaped


def test_streamlit_run_app_py_serves_the_gated_st_app() -> None:
    """`streamlit run app.py` finds the `st.App` in app.py's syntax tree (it imports the file as `app`): the
    gate is in front of every session, while a session runs the same file as `__main__` (the navigation)."""
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"


def test_under_a_base_url_path_every_route_keeps_the_prefix(tmp_path) -> None:
    inner = Inner()
    g = Gate(inner, pass_word="pw", secret=b"s" * 32, ttl_s=60, prefix="/team", workspace=tmp_path)
    status, headers, _, _ = call(g, "/team/recommend?run=r")
    assert status == 303 and headers["location"] == "/team/_gate/signin?next=%2Fteam%2Frecommend%3Frun%3Dr"
    status, headers, _, _ = call(g, "/team/_gate/signin", "POST", b"password=pw&next=%2Fteam%2Frecommend")
    assert status == 303 and headers["location"] == "/team/recommend" and "Path=/team;" in headers["set-cookie"]
    assert call(g, "/team/_stcore/stream", kind="websocket", cookie=token_of(headers))[0] == 0
    assert call(g, "/team/_stcore/upload_file/s/f", "PUT", b"x")[0] == 401 and call(g, "/team/_stcore/health")[0] == 200


@pytest.mark.parametrize(("raw", "hours"), [("", 12), ("2", 2), ("0.5", 0.5), ("soon", 12), ("-3", 12), ("nan", 12)])
def test_session_hours_come_from_the_setting_or_default_to_twelve(monkeypatch, raw, hours) -> None:
    monkeypatch.setenv(gate.HOURS_ENV, raw)
    assert gate._session_hours() == hours
