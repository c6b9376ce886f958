"""End to end in a real browser: the Blurbs page opens on the demo with its facts, the user picks one of
the operator's OpenAI-compatible servers (by name: no URL can be typed) and writes one blurb, checked and
marked "llm"; a server whose first draft strays has that draft rejected, and its text never reaches the browser, while it is written or after;
with the server's warm-up on, the bundled model is loaded from the workspace's converted copy before the
visitor asks, and the first blurb needs no load.

The server is a real HTTP server on loopback (tests/llm_loopback.py) that answers with a sentence naming
the recommended title it finds in the prompt's DATA block: the bundled local model is too slow for a
browser test on a 2-core CI machine (its own tests are in tests/test_llm_backends.py). Runs `streamlit
run app.py` in a subprocess with a temporary workspace and drives the system Chromium with Playwright.
Skips when Chromium or Playwright is missing. E2E_SCREENSHOTS=<dir> keeps screenshots.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from e2e_util import app_page, settled, shot
from llm_loopback import LoopbackLLM

TIMEOUT_MS = 180_000  # the first model page starts the baseline job beside it; a busy 2-core CI machine needs slack


@pytest.fixture(autouse=True)
def ease_run(tmp_path: Path) -> None:
    """The workspace the app opens holds a finished EASE run. Without one the page starts the automatic baseline
    job, and the page's rerun when that job ends stopped a blurb being written (the test then waited 9 min)."""
    from recsys_core.data.demo import DEMO_NAME, load_demo
    from recsys_core.training.experiment import run_experiment
    from recsys_core.workspace.registry import Workspace

    ws = Workspace(tmp_path / "workspace")
    ws.ensure_demo()
    run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)


def _recommended_title(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    line = re.search(r"^recommended_\w+: (.+)$", prompt, re.MULTILINE)
    return json.loads(line.group(1)) if line else "?"


def _reply(body: dict) -> str:
    return f"{_recommended_title(body)} is picked for you: settle in and enjoy it tonight."


STRAY = "is the latest installment in the Star Trek universe; read more at https://startrek.example today."


def _stray_first(body: dict) -> str:
    """The first draft strays (a link, and a franchise outside the facts unless the title is of it: the
    issue's rejected draft); the retry
    (its prompt carries the rejection reason) is grounded."""
    if "previous draft was rejected" in body["messages"][-1]["content"]:
        return _reply(body)
    return f"{_recommended_title(body)} {STRAY}"


def _open_blurbs_on(page, expect, server: LoopbackLLM) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Blurbs", exact=True).click()
    expect(page.get_by_role("heading", name="Blurbs", exact=True)).to_be_visible()
    expect(page.get_by_text("Facts the model may use")).to_be_visible()  # popularity, or the baseline job's run
    expect(page.locator('[data-testid="stJson"]')).to_contain_text("because the user liked")
    settled(page, TIMEOUT_MS)
    shot(page, "1_blurbs_open")
    page.get_by_text("LLM server set up by the operator", exact=False).click()
    settled(page, TIMEOUT_MS)
    picked = page.locator(".st-key-blurbs_endpoint input")  # the only server listed: already picked
    expect(picked).to_have_value(re.compile(re.escape(server.name)))
    expect(page.locator(".st-key-blurbs_url")).to_have_count(0)


@pytest.fixture
def no_server_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY", "RECSYS_LLM_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_WARMUP", "0")  # these tests use a server; the local model's warm-up is not theirs


def test_write_one_blurb_in_browser(tmp_path: Path, no_server_llm: None) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    with LoopbackLLM(_reply) as server, app_page(tmp_path, TIMEOUT_MS, height=1100) as page:
        _open_blurbs_on(page, expect, server)
        page.locator(".st-key-blurbs_write button").click()
        settled(page, TIMEOUT_MS)
        final = page.locator(".st-key-blurbs_final")
        expect(final).to_contain_text("is picked for you: settle in and enjoy it tonight.")
        title = _recommended_title(server.requests[-1])
        expect(final).to_contain_text(title)
        expect(page.locator('[data-testid="stAlertContentSuccess"]').first).to_contain_text("Written by the model")
        assert server.requests[-1]["stream"] is True and server.requests[-1]["model"] == "tiny"
        expect(page.get_by_text("Traceback")).to_have_count(0)
        shot(page, "2_blurb_written")


def test_a_rejected_draft_is_never_in_the_dom(tmp_path: Path, no_server_llm: None) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    marker = "latest installment"  # words of the stray draft that no status line or rejection reason quotes
    with LoopbackLLM(_stray_first, word_delay_s=0.25) as server, \
            app_page(tmp_path, TIMEOUT_MS, height=1100) as page:
        _open_blurbs_on(page, expect, server)
        page.locator(".st-key-blurbs_write button").click()
        expect(page.get_by_text("Writing draft 1")).to_be_visible()  # status, not text, while the draft streams
        seen_while_writing = []
        for _ in range(12):  # the stray draft takes ~5 s to stream at 0.25 s a word
            seen_while_writing.append(marker in page.content())
            page.wait_for_timeout(300)
        settled(page, TIMEOUT_MS)
        final = page.locator(".st-key-blurbs_final")
        expect(final).to_contain_text("is picked for you: settle in and enjoy it tonight.")
        html = page.content()
        shot(page, "3_rejected_then_retried")
    assert len(server.requests) == 2 and "previous draft was rejected" in server.requests[1]["messages"][-1]["content"]
    assert not any(seen_while_writing), "the unchecked draft was shown while it was written"
    assert marker not in html and "startrek.example" not in html, "a rejected draft is still in the DOM"
    assert "llm-retry" in html and "2 draft(s)" in html


def test_the_warm_up_loads_the_local_model_before_the_first_blurb(tmp_path: Path, local_backend,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.blurbs.loading import DEFAULT_DIRNAME

    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    *_, cache = local_backend
    (tmp_path / "workspace" / "llm").mkdir(parents=True)  # as after an earlier server converted the GGUF here
    (tmp_path / "workspace" / "llm" / DEFAULT_DIRNAME).symlink_to(cache / DEFAULT_DIRNAME)
    monkeypatch.setenv("RECSYS_WARMUP", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RECSYS_INTERACTIVE_THREADS", "1")  # the server's default (conftest raises it for tests)
    with app_page(tmp_path, TIMEOUT_MS, height=1100) as page:
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Blurbs", exact=True).click()
        expect(page.get_by_text("Facts the model may use")).to_be_visible()
        settled(page, TIMEOUT_MS)
        for _ in range(120):  # the warm-up started with the server; a rerun shows whether it is done
            if page.get_by_text("Model ready").count():
                break
            page.locator(".st-key-blurbs_tone").click()  # any interaction reruns the page
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
        expect(page.get_by_text("Model ready")).to_be_visible()
        clicked = time.monotonic()
        page.locator(".st-key-blurbs_write button").click()
        # ~60 tokens: seconds on an idle CPU, minutes on a shared CI box at load 25 (seen), hence the wait
        expect(page.locator(".st-key-blurbs_final")).to_be_visible(timeout=3 * TIMEOUT_MS)
        took = time.monotonic() - clicked
        assert page.get_by_text("Loading SmolLM2").count() == 0  # the click never waited for a load
        shot(page, "4_local_model_blurb")
    log = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    print(f"first blurb after the warm-up: {took:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
