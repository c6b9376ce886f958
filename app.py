"""RecSys Explorer: the Streamlit entry point (`streamlit run app.py`).

Pages are registered explicitly from `pages.ui.nav.PAGES`, so helper modules under `pages/` are never
listed as pages. Each page draws the sidebar's active-dataset selector itself, so a page also works
when Streamlit runs it without this entry point (its legacy multipage fallback after a restart).
With `RECSYS_PASSWORD` set, a session sees only a sign-in page until it gives the password (`pages/ui/auth.py`).
"""

from __future__ import annotations

import streamlit as st

from pages.ui.auth import password_page, password_required
from pages.ui.nav import PAGES

st.set_page_config(page_title="RecSys Explorer", page_icon=":material/recommend:", layout="wide")

if password_required():  # RECSYS_PASSWORD is set: a session sees only the sign-in page until it gives it
    navigation = st.navigation([st.Page(password_page, title="Sign in", icon=":material/lock:")])
else:
    navigation = st.navigation(
        [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES],
    )
navigation.run()
