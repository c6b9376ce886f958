"""End to end in a real browser: Recommend -> pick a user -> see their top K -> "Explain it" -> the Explain
page shows that user's explanation (waterfall chart, reasons sentence, method, deletion check).

Runs `streamlit run app.py` in a subprocess (temporary workspace, so the first model page serves the
popularity ranking while the automatic EASE baseline trains as a job, then that run) and drives the system Chromium with Playwright. Skips when Chromium or Playwright
is missing. Set E2E_SCREENSHOTS=<dir> to keep full-page screenshots of each step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_util import app_page, settled, shot

TIMEOUT_MS = 180_000  # the first model page starts the baseline job beside it; a busy 2-core CI machine needs slack




def test_recommend_then_explain_in_browser(tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect
    with app_page(tmp_path, TIMEOUT_MS) as page:
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Recommend", exact=True).click()
        expect(page.get_by_role("heading", name="Recommend", exact=True)).to_be_visible()
        expect(page.locator(".st-key-rec_topk")).to_be_visible()  # at once: popularity while the baseline job trains
        settled(page, TIMEOUT_MS)

        page.locator(".st-key-rec_random button").click()
        settled(page, TIMEOUT_MS)
        heading = page.get_by_role("heading", name=re.compile(r"^History of "))
        expect(heading).to_be_visible()
        user_id = heading.inner_text().strip().removeprefix("History of ").strip()
        expect(page.locator(".st-key-rec_topk")).to_be_visible()
        expect(page.get_by_role("heading", name=re.compile(r"^Top \d+ for this user"))).to_be_visible()
        shot(page, "1_recommend")

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
        shot(page, "2_explain")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
