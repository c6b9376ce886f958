"""Start the real app in a subprocess and a Debian Chromium driven by Playwright (never downloaded)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    """Path of the system Chromium, or skip the test (with the reason) when it or Playwright is absent."""
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no system Chromium on PATH (apt-get install chromium); Playwright browsers are never downloaded")
    return path


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


@contextmanager
def streamlit_server(workspace: Path, log: Path, timeout_s: float = 90,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run app.py` on a free local port with its own workspace (and `env` added to this process's
    environment, e.g. RECSYS_PASSWORD); yields the base URL."""
    port = free_port()
    env = {**os.environ, "RECSYS_WORKSPACE": str(workspace), "BROWSER": "none",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, log, timeout_s)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def app_page(tmp_path: Path, timeout_ms: int, height: int = 1000) -> Iterator[object]:
    """The app on a temporary workspace and a Chromium page already on its home page, with Playwright's
    default timeouts set to `timeout_ms`. Skips when Chromium or Playwright is missing."""
    chromium = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=timeout_ms)
    with streamlit_server(tmp_path / "workspace", tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    """A full-page screenshot into $E2E_SCREENSHOTS, when it is set (for reviewing a run by eye)."""
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def settled(page, timeout_ms: int) -> None:
    """Wait until Streamlit has finished the run a click started (the 'running' widget is gone)."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_ms)
