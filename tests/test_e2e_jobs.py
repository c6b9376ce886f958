"""Jobs belong to the workspace, not the tab, in a real browser: training started in one tab shows its
progress in a second tab opened on the Train page, which cancels it; the first tab then shows the run
cancelled and lists it under 'Saved runs' without a reload.

Runs `streamlit run app.py` in a subprocess (temporary workspace) and drives the system Chromium with
Playwright. Set E2E_SCREENSHOTS=<dir> to keep full-page screenshots of each step.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from e2e_util import app_page, settled, shot

from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

TIMEOUT_MS = 120_000  # the job's own process imports torch before its first step


def test_a_second_tab_sees_and_cancels_a_job_started_in_the_first(tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect

    with app_page(tmp_path, TIMEOUT_MS) as first:
        store = JobStore(Workspace(tmp_path / "workspace"))
        try:
            _walk(first, store, expect)
        finally:  # never leave a training process behind a failed test
            for job in store.list(active_only=True):
                store.request_cancel(job.id)


def _open_train(page) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Train", exact=True).click()
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    settled(page, TIMEOUT_MS)


def _walk(first, store: JobStore, expect) -> None:
    _open_train(first)
    first.get_by_role("button", name="Start training").click()  # BERT4Rec, the first model, with defaults
    card = first.locator(".st-key-train_job_card_1")
    expect(card).to_contain_text("started in this tab")

    second = first.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    second.set_default_timeout(TIMEOUT_MS)
    second.goto(first.url)  # the Train page's own address: a fresh session, as a colleague's tab
    other = second.locator(".st-key-train_job_card_1")
    expect(other).to_contain_text("Job #1")
    expect(other).not_to_contain_text("started in this tab")
    # Progress in human units, and the model's live loss curve, in the tab that did not start it.
    expect(other.get_by_role("progressbar")).to_be_visible()
    expect(other).to_contain_text(re.compile(r"step [\d,]+ of [\d,]+ \(\d+%\)"))
    expect(other).to_contain_text(re.compile(r"(about|at most) \d+ (s|min|h)"))
    expect(other.locator(".js-plotly-plot").first).to_be_visible()
    expect(other).not_to_contain_text("Traceback")
    shot(second, "jobs_1_second_tab_running")

    asked = time.monotonic()
    other.get_by_role("button", name="Cancel").click()
    clicked_s = time.monotonic() - asked
    while not store.get(1).cancel and time.monotonic() - asked < 30:
        time.sleep(0.02)
    flagged_s = time.monotonic() - asked  # the server ran the button's callback: the flag is set
    # The tab says at once that the job is stopping (the child stops training within 2 s of the flag: see
    # tests/test_jobs.py), then shows it cancelled once the kept weights are evaluated and recorded.
    expect(other).to_contain_text("cancel requested", timeout=10_000)
    acknowledged_s = time.monotonic() - asked
    while store.get(1).active and time.monotonic() - asked < 60:
        time.sleep(0.05)
    recorded_s = time.monotonic() - asked
    expect(other).to_contain_text("was cancelled")
    print(f"cancel: click took {clicked_s:.1f} s, flag set after {flagged_s:.1f} s, acknowledged in the tab after {acknowledged_s:.1f} s, recorded after {recorded_s:.1f} s")
    shot(second, "jobs_2_second_tab_cancelled")

    expect(card).to_contain_text("was cancelled")  # the first tab follows, without a reload
    expect(card).not_to_contain_text("finished and was evaluated")
    saved = first.get_by_role("combobox", name="Use a saved model")
    expect(saved).to_have_value(re.compile(r"^#1 bert4rec .*\(cancelled\)$"))  # 'Saved runs' is fresh
    shot(first, "jobs_3_first_tab_cancelled")
    job = store.get(1)
    assert job.status == "cancelled" and job.cancel and job.run_id is not None
