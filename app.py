"""RecSys Explorer: the Streamlit entry point (`streamlit run app.py`).

Pages are registered explicitly from `pages.ui.nav.PAGES`, so helper modules under `pages/` are never
listed as pages. Each page draws the sidebar's active-dataset selector itself, so a page also works
when Streamlit runs it without this entry point (its legacy multipage fallback after a restart).
"""

from __future__ import annotations

import streamlit as st

from pages.ui.nav import PAGES

st.set_page_config(page_title="RecSys Explorer", page_icon=":material/recommend:", layout="wide")

navigation = st.navigation(
    [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES],
)
navigation.run()
