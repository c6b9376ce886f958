"""In a real browser: a reload keeps the view, and the address bar is a link a colleague can open.

Recommend: pick a random user, reload, and the same user is back; the URL in a second browser context (a
colleague's browser: no shared session), with K = 20 added, opens the same user's top 20. Embeddings: the 3-D
toggle survives a reload. Skips when Chromium or Playwright is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from e2e_util import app_page, settled, shot

TIMEOUT_MS = 180_000  # the first model page starts the baseline job beside it; a busy 2-core CI machine needs slack


def _history_heading(page) -> str:
    heading = page.get_by_role("heading", name=re.compile(r"^History of "))
    heading.wait_for()
    return heading.inner_text().strip().removeprefix("History of ").strip()


def test_reload_and_a_shared_link_keep_the_view(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    expect = sync_api.expect
    with app_page(tmp_path, TIMEOUT_MS) as page:
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Recommend", exact=True).click()
        expect(page.locator(".st-key-rec_topk")).to_be_visible()
        settled(page, TIMEOUT_MS)
        page.locator(".st-key-rec_random button").click()
        settled(page, TIMEOUT_MS)
        user = _history_heading(page)
        query = parse_qs(urlparse(page.url).query)
        assert query.get("user") == [user] and query.get("dataset"), page.url

        page.reload()
        settled(page, TIMEOUT_MS)
        assert _history_heading(page) == user
        shot(page, "reload_recommend")

        # A colleague's browser (no shared session) opens the link with K = 20 added by hand.
        colleague = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            other = colleague.new_page()
            other.set_default_timeout(TIMEOUT_MS)
            other.goto(f"{page.url}&k=20")
            assert _history_heading(other) == user
            expect(other.get_by_role("heading", name=re.compile(r"^Top 20 for this user"))).to_be_visible()
        finally:
            colleague.close()

        page.locator('[data-testid="stSidebarNav"]').get_by_text("Embeddings", exact=True).click()
        settled(page, TIMEOUT_MS)
        page.locator(".st-key-emb_dims").get_by_text("3-D", exact=True).click()
        settled(page, TIMEOUT_MS)
        assert parse_qs(urlparse(page.url).query).get("dims") == ["3"], page.url
        page.reload()
        settled(page, TIMEOUT_MS)
        expect(page.locator(".st-key-emb_dims input[type=radio]").nth(1)).to_be_checked()
        expect(page.get_by_text("Traceback")).to_have_count(0)
        shot(page, "reload_embeddings")

