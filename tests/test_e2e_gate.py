"""The gate on the real server (`streamlit run app.py` with RECSYS_PASSWORD), as a raw HTTP/websocket client
over loopback and as a visitor in Chromium. One server for the module; the parallel guessing runs last,
since it leaves the global backoff at its longest.

Screenshots of the browser walk go to $E2E_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time
from urllib.parse import urlencode, urlsplit

import pytest
from e2e_util import CHROMIUM_ARGS, chromium_path, settled, shot, streamlit_server

from views.ui.gate import COOKIE, Sessions

PASSWORD = "correct horse battery staple"
SECRET = "e2e-session-secret-0123456789abcdef"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    env = {"RECSYS_PASSWORD": PASSWORD, "RECSYS_SESSION_SECRET": SECRET}
    with streamlit_server(tmp / "ws", tmp / "streamlit.log", env=env) as url:
        yield url, tmp


def request(url: str, method: str, path: str, body: bytes | None = None, cookie: str = "",
            source: str = "127.0.0.1", headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection, from the loopback address `source` (any 127.x.y.z works)."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30, source_address=(source, 0))
    try:
        sent = {**({"Cookie": f"{COOKIE}={cookie}"} if cookie else {}), **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def sign_in(url: str, password: str, next_path: str = "/", source: str = "127.0.0.1"):
    return request(url, "POST", "/_gate/signin", urlencode({"password": password, "next": next_path}).encode(),
                   source=source)


def websocket_status(url: str, cookie: str = "") -> int:
    """The handshake's status for Streamlit's websocket: 101 when it opened."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(url.replace("http://", "ws://") + "/_stcore/stream", open_timeout=30,
                     additional_headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else None):
            return 101
    except InvalidStatus as err:
        return err.response.status_code


def test_every_door_is_shut_before_sign_in(server) -> None:
    url, _ = server
    status, headers, _ = request(url, "GET", "/recommend?dataset=demo&run=run-00001")
    assert status == 303 and headers["location"] == "/_gate/signin?next=%2Frecommend%3Fdataset%3Ddemo%26run%3Drun-00001"
    status, _, body = request(url, "GET", headers["location"])
    assert status == 200 and b'name="password"' in body and b"/recommend?dataset=demo&amp;run=run-00001" in body
    assert request(url, "GET", "/")[0] == 303
    for path in ("/_stcore/host-config", "/static/js/index.js", "/_stcore/upload_file/s/f"):
        assert request(url, "GET", path)[0] == 401, path
    assert websocket_status(url) == 403
    assert request(url, "GET", "/_stcore/health")[0] == 200  # Docker's health check stays open

    # An upload announcing 400 MB is answered at once, from its headers: the server reads none of the body.
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"PUT /_stcore/upload_file/session/file HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + b"x" * 65536)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 5


def test_the_password_opens_the_doors_and_cookies_are_checked(server) -> None:
    url, _ = server
    status, headers, _ = sign_in(url, PASSWORD, "/recommend?dataset=demo")
    assert status == 303 and headers["location"] == "/recommend?dataset=demo"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert sign_in(url, PASSWORD, "//evil.example/phish")[1]["location"] == "/"  # no open redirect
    assert sign_in(url, PASSWORD, "https://evil.example/")[1]["location"] == "/"

    status, headers, body = request(url, "GET", "/recommend?dataset=demo", cookie=token)
    assert status == 200 and b"<!doctype html>" in body.lower() and "x-recsys-gate" not in headers
    assert websocket_status(url, token) == 101
    # Past the gate the upload meets Streamlit's own checks (here its XSRF token): the gate let it through.
    status, headers, _ = request(url, "PUT", "/_stcore/upload_file/s/f", b"--b--", cookie=token,
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert "x-recsys-gate" not in headers and status in (400, 403)

    expiry, nonce, sig = token.split(".")
    tampered = f"{int(expiry) + 86400}.{nonce}.{sig}"
    expired = Sessions(SECRET.encode(), PASSWORD, ttl_s=60, clock=lambda: time.time() - 3600).issue()
    foreign = Sessions(b"another server's secret", PASSWORD, ttl_s=3600).issue()
    for bad in (tampered, expired, foreign, "garbage"):
        assert request(url, "GET", "/recommend", cookie=bad)[0] == 303, bad
        assert websocket_status(url, bad) == 403
        assert request(url, "PUT", "/_stcore/upload_file/s/f", b"x", cookie=bad)[0] == 401


def test_a_visitor_follows_a_link_signs_in_lands_on_it_and_stays_signed_in(server, tmp_path) -> None:
    chromium = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    expect.set_options(timeout=TIMEOUT_MS)
    csv = tmp_path / "tiny.csv"
    csv.write_text("user,item,rating\nu1,i1,5\nu1,i2,3\nu2,i1,4\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/recommend?dataset=demo")
            expect(page.locator("#password")).to_be_visible()
            assert "/_gate/signin?next=" in page.url
            shot(page, "gate-1-sign-in")
            page.fill("#password", "not it")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert")).to_contain_text("Wrong password")
            shot(page, "gate-2-wrong")
            page.wait_for_timeout(1500)  # this address's first backoff (1 s)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/recommend?dataset=demo")
            expect(page.get_by_role("heading", name="Recommend").first).to_be_visible()
            settled(page, TIMEOUT_MS)
            shot(page, "gate-3-landed")
            [cookie] = [c for c in page.context.cookies() if c["name"] == COOKIE]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            page.reload()
            expect(page.get_by_role("heading", name="Recommend").first).to_be_visible()
            assert page.locator("#password").count() == 0 and page.url.startswith(f"{url}/recommend")
            settled(page, TIMEOUT_MS)
            shot(page, "gate-4-reloaded")

            # A link from another site (mail, chat) comes without the SameSite=Strict cookie: the sign-in page
            # finds the session from its own origin and goes on, without asking again.
            page.route("http://elsewhere.example/**", lambda route: route.fulfill(
                content_type="text/html", body=f'<a id="go" href="{url}/explain?dataset=demo">a shared link</a>'))
            page.goto("http://elsewhere.example/mail")
            page.click("#go")
            page.wait_for_url(f"{url}/explain?dataset=demo")
            expect(page.get_by_role("heading", name="Explain").first).to_be_visible()
            shot(page, "gate-5-link-from-elsewhere")

            page.goto(f"{url}/data")
            expect(page.get_by_role("heading", name="Data").first).to_be_visible()
            with page.expect_response(lambda r: "/_stcore/upload_file/" in r.url
                                      and r.request.method == "PUT") as upload:
                page.locator("input[type=file]").first.set_input_files(str(csv))
            assert upload.value.status == 204  # a signed-in upload goes through the gate
            shot(page, "gate-6-uploaded")

            page.get_by_role("link", name="Sign out").click()
            page.wait_for_url("**/_gate/signin**")
            page.goto(f"{url}/recommend")
            expect(page.locator("#password")).to_be_visible()
            shot(page, "gate-7-signed-out")
        finally:
            browser.close()


def test_twenty_parallel_guessers_share_one_backoff(server) -> None:
    url, tmp = server
    log = tmp / "ws" / "gate-failures.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    duration_s = 8.0
    started = time.monotonic()

    def guesser(n: int) -> None:
        source = f"127.0.0.{10 + n}"  # twenty client addresses: the per-address backoff alone would not hold
        while time.monotonic() - started < duration_s:
            status, headers, _ = sign_in(url, f"guess-{n}-{time.monotonic()}", source=source)
            with lock:
                results.append((time.monotonic() - started, status, headers.get("retry-after", "")))
            time.sleep(0.2)  # a polite attacker: the 429s cost the shared test box little

    threads = [threading.Thread(target=guesser, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked = sorted(t for t, status, _ in results if status == 401)
    refused = [r for r in results if r[1] == 429]
    assert {status for _, status, _ in results} <= {401, 429}
    # Global waits 0.5, 1, 2, 4 s after each checked guess: about five guesses in eight seconds from everyone.
    assert 3 <= len(checked) <= 6 and len(refused) > 5 * len(checked)
    gaps = [b - a for a, b in itertools.pairwise(checked)]
    assert all(gap >= 0.45 * 2 ** i for i, gap in enumerate(gaps)), gaps  # the backoff grows
    assert max(int(r) for _, _, r in refused) >= 4
    assert len(log.read_text().splitlines()) - before == len(checked)  # every checked failure logged
    print(f"\n20 parallel guessers, {duration_s:.0f} s: {len(checked)} guesses checked "
          f"({len(checked) / duration_s:.2f}/s), {len(refused)} refused with 429")
