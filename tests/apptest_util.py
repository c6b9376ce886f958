"""Shared AppTest harness for page tests: run `app.py` as `streamlit run` does, open a page.

Use in a test module with `from apptest_util import navigation_mode, open_app  # noqa: F401`
(`navigation_mode` is an autouse fixture once imported).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT_S = 60


class _NavigationOnly(PagesManager):
    uses_pages_directory = False


@pytest.fixture(autouse=True)
def navigation_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the app as `streamlit run` does once `st.navigation` has been called.

    AppTest re-detects the legacy multipage mode before every run; in that mode `switch_page` runs the
    page file alone and skips `app.py` with its sidebar (streamlit/streamlit#9446, #14217). The pages
    live in `views/` so the mode never triggers, and this patch pins the navigation behaviour anyway.
    """
    monkeypatch.setattr(script_runner, "PagesManager", _NavigationOnly)


def open_app(page: str | None = None, timeout_s: float = TIMEOUT_S) -> AppTest:
    """Run the app (home page), then switch to `page` (e.g. 'views/data.py'); fails on any exception."""
    at = AppTest.from_file(APP, default_timeout=timeout_s).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
