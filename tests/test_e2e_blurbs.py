"""End to end in a real browser: the Blurbs page opens on the demo with its facts, the user points it at
an OpenAI-compatible server and writes one blurb, streamed into the page, checked and marked "llm".

The server is a real HTTP server on loopback (tests/llm_loopback.py) that answers with a sentence naming
the recommended title it finds in the prompt's DATA block: the bundled local model is too slow for a
browser test on a 2-core CI machine (its own tests are in tests/test_llm_backends.py). Runs `streamlit
run app.py` in a subprocess with a temporary workspace and drives the system Chromium with Playwright.
Skips when Chromium or Playwright is missing. E2E_SCREENSHOTS=<dir> keeps screenshots.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from e2e_util import app_page, settled, shot
from llm_loopback import LoopbackLLM

TIMEOUT_MS = 180_000  # the first model page trains a baseline; a busy 2-core CI machine needs slack


def _recommended_title(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    line = re.search(r"^recommended_\w+: (.+)$", prompt, re.MULTILINE)
    return json.loads(line.group(1)) if line else "?"


def _reply(body: dict) -> str:
    return f"{_recommended_title(body)} is picked for you: settle in and enjoy it tonight."


def test_write_one_blurb_in_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    for name in ("RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with LoopbackLLM(_reply) as server, app_page(tmp_path, TIMEOUT_MS, height=1100) as page:
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Blurbs", exact=True).click()
        expect(page.get_by_role("heading", name="Blurbs", exact=True)).to_be_visible()
        expect(page.get_by_text("Facts the model may use")).to_be_visible()  # after the baseline is trained
        expect(page.locator('[data-testid="stJson"]')).to_contain_text("because the user liked")
        settled(page, TIMEOUT_MS)
        shot(page, "1_blurbs_open")

        page.get_by_text("OpenAI-compatible server", exact=False).click()
        settled(page, TIMEOUT_MS)
        page.locator(".st-key-blurbs_url input").fill(server.url)
        page.locator(".st-key-blurbs_url input").press("Enter")
        settled(page, TIMEOUT_MS)
        page.locator(".st-key-blurbs_model input").fill("tiny")
        page.locator(".st-key-blurbs_model input").press("Enter")
        settled(page, TIMEOUT_MS)

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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
