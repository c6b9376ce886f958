"""In a real browser: a dataset whose titles and genres are HTML (a link, a full-screen styled span, an
image with onerror) renders them as plain text on the Recommend and Explain pages: no element from a
title exists in the DOM. Skips when Chromium or Playwright is missing (E2E_SCREENSHOTS=<dir> keeps shots)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_util import app_page, settled, shot

from bench.attacks import HTML_TITLES, tiny_dataset
from recsys_core.workspace.registry import Workspace

TIMEOUT_MS = 180_000
NAME = "html-titles"
# Anything a title could have turned into: a link (not the heading anchor Streamlit adds), styled text
# covering the page, an image, a script.
INJECTED = ['a[href*="evil"]:not([href^="#"])', '[style*="position:fixed"]', '[style*="background:red"]', 'img[src="x"]',
            "[onerror]"]


def _no_injected_elements(page) -> None:
    for selector in INJECTED:
        found = page.locator(selector)
        assert found.count() == 0, f"an element from a title is in the DOM: {found.first.evaluate('e => e.outerHTML')}"


def _pick_dataset(page, expect) -> None:
    box = page.get_by_role("combobox", name="Active dataset")
    box.click()
    page.keyboard.type(NAME)
    page.keyboard.press("Enter")
    expect(box).to_match_aria_snapshot(f'- combobox "Active dataset": {NAME}')


def test_html_titles_stay_text_on_recommend_and_explain(tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    Workspace(tmp_path / "workspace").save_dataset(tiny_dataset(HTML_TITLES), name=NAME)
    with app_page(tmp_path, TIMEOUT_MS) as page:
        settled(page, TIMEOUT_MS)
        _pick_dataset(page, expect)
        settled(page, TIMEOUT_MS)
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Recommend", exact=True).click()
        expect(page.locator(".st-key-rec_topk")).to_be_visible()
        settled(page, TIMEOUT_MS)
        expect(page.get_by_text(re.compile("CLICKME")).first).to_be_attached()  # shown, as text
        _no_injected_elements(page)
        shot(page, "html_1_recommend")

        page.locator('[data-testid="stSidebarNav"]').get_by_text("Explain", exact=True).click()
        chart = page.locator(".st-key-explain_waterfall .js-plotly-plot").first
        expect(chart).to_be_visible()
        expect(page.locator(".st-key-explain_attributes .js-plotly-plot").first).to_be_visible()
        settled(page, TIMEOUT_MS)
        expect(page.locator(".js-plotly-plot").get_by_text(re.compile("CLICKME|COVER|<img")).first).to_be_attached()
        _no_injected_elements(page)
        expect(page.get_by_text("Traceback")).to_have_count(0)
        shot(page, "html_2_explain")
