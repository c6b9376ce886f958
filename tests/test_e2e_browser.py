"""End to end in a real browser: the app opens on the demo, a CSV uploaded on the Data page becomes
the active dataset with its statistics, and a broken file shows a readable error.

Runs `streamlit run app.py` in a subprocess (temporary workspace) and drives the system Chromium
with Playwright. Skips when Chromium or Playwright is missing. Set E2E_SCREENSHOTS=<dir> to keep
full-page screenshots of each step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from e2e_util import app_page, shot

from recsys_core.data.demo import DEMO_NAME

TIMEOUT_MS = 60_000


def _movietweetings_style_csv(path: Path) -> tuple[int, int, int]:
    """Synthetic `user_id,movie_id,rating,rating_timestamp` ratings; returns (users, items, rows)."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(37):
        for m in rng.choice(60, size=3 + u % 6, replace=False):
            rows.append((f"u{u}", f"{int(m):07d}", int(rng.integers(1, 11)), 1362000000 + 3600 * len(rows)))
    frame = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "rating_timestamp"])
    frame.to_csv(path, index=False)
    return frame["user_id"].nunique(), frame["movie_id"].nunique(), len(frame)


def _metric(page, label: str) -> str:
    tile = page.locator('[data-testid="stMetric"]', has_text=label).first
    return tile.locator('[data-testid="stMetricValue"]').inner_text().strip()



def test_upload_csv_then_bad_file_in_browser(tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed").expect

    good = tmp_path / "my_ratings.csv"
    n_users, n_items, n_rows = _movietweetings_style_csv(good)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"this is not a parquet file\n" * 20)

    with app_page(tmp_path, TIMEOUT_MS) as page:
        active = page.get_by_role("combobox", name="Active dataset")
        # Zero clicks: the home page already shows the demo dataset.
        expect(page.get_by_role("heading", name="RecSys Explorer")).to_be_visible()
        expect(page.get_by_text(DEMO_NAME).first).to_be_visible()
        shot(page, "1_home")

        page.locator('[data-testid="stSidebarNav"]').get_by_text("Data", exact=True).click()
        expect(page.get_by_role("heading", name="Data", exact=True)).to_be_visible()
        expect(page.locator(".st-key-chart_users .js-plotly-plot").first).to_be_visible()

        page.locator(".st-key-data_file input[type='file']").set_input_files(str(good))
        page.locator(".st-key-data_load button").click()
        expect(page.get_by_text("Loaded and saved")).to_be_visible()
        expect(page.get_by_role("heading", name="Statistics: my_ratings")).to_be_visible()
        assert _metric(page, "Users") == f"{n_users:,}"
        assert _metric(page, "Items") == f"{n_items:,}"
        assert _metric(page, "Interactions") == f"{n_rows:,}"
        chart = page.locator(".st-key-chart_users .js-plotly-plot").first
        expect(chart).to_be_visible()
        expect(chart).to_contain_text("User rank")
        expect(page.locator(".st-key-chart_activity .js-plotly-plot").first).to_be_visible()
        expect(active).to_match_aria_snapshot('- combobox "Active dataset": my_ratings')
        shot(page, "2_data_loaded")

        page.locator(".st-key-data_file input[type='file']").set_input_files(str(bad))
        error = page.locator('[data-testid="stAlertContentError"]').first
        expect(error).to_be_visible()
        expect(error).to_contain_text("broken.parquet")
        expect(page.get_by_text("Traceback")).to_have_count(0)
        error.scroll_into_view_if_needed()
        # The failed upload changed nothing: the loaded dataset is still the active one.
        expect(active).to_match_aria_snapshot('- combobox "Active dataset": my_ratings')
        shot(page, "3_bad_file")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
