"""End to end in a real browser: Recommend -> pick a user -> see their top K -> "Explain it" -> the Explain
page shows that user's explanation (waterfall chart, reasons sentence, method, deletion check).

Runs `streamlit run app.py` in a subprocess (temporary workspace, so the first model page trains the
quick EASE baseline) and drives the system Chromium with Playwright. Skips when Chromium or Playwright
is missing. Set E2E_SCREENSHOTS=<dir> to keep full-page screenshots of each step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from e2e_util import CHROMIUM_ARGS, chromium_path, streamlit_server

TIMEOUT_MS = 180_000  # the first model page trains a baseline; a busy 2-core CI machine needs slack


def _shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _settled(page) -> None:
    """Wait until Streamlit has finished the run a click started (the 'running' widget is gone)."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=TIMEOUT_MS)


def test_recommend_then_explain_in_browser(tmp_path: Path) -> None:
    chromium = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with streamlit_server(tmp_path / "workspace", tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator('[data-testid="stSidebarNav"]').get_by_text("Recommend", exact=True).click()
            expect(page.get_by_role("heading", name="Recommend", exact=True)).to_be_visible()
            expect(page.locator(".st-key-rec_topk")).to_be_visible()  # after the baseline is trained
            _settled(page)

            page.locator(".st-key-rec_random button").click()
            _settled(page)
            heading = page.get_by_role("heading", name=re.compile(r"^History of "))
            expect(heading).to_be_visible()
            user_id = heading.inner_text().strip().removeprefix("History of ").strip()
            expect(page.locator(".st-key-rec_topk")).to_be_visible()
            expect(page.get_by_role("heading", name=re.compile(r"^Top \d+ for this user"))).to_be_visible()
            _shot(page, "1_recommend")

            page.locator(".st-key-rec_explain button").click()
            expect(page.get_by_role("heading", name="Explain", exact=True)).to_be_visible()
            user_box = page.get_by_role("combobox", name="User")
            expect(user_box).to_match_aria_snapshot(f'- combobox "User": /^{re.escape(user_id)} \\(\\d+ items\\)$/')
            chart = page.locator(".st-key-explain_waterfall .js-plotly-plot").first
            expect(chart).to_be_visible()
            expect(chart).to_contain_text("Model score")
            reasons = page.locator('[data-testid="stAlertContentSuccess"]').first
            expect(reasons).to_contain_text(re.compile(r"is recommended mainly because|None of the past items"))
            expect(page.get_by_text(re.compile(r"^Method: "))).not_to_have_count(0)
            expect(page.locator(".st-key-explain_attributes .js-plotly-plot").first).to_be_visible()
            expect(page.get_by_text("Traceback")).to_have_count(0)
            _shot(page, "2_explain")
        finally:
            browser.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
