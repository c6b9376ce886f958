"""RecSys Explorer: the Streamlit entry point (`streamlit run app.py`).

Pages are registered explicitly from `pages.nav.PAGES`, so helper modules under `pages/` are never
listed as pages. The sidebar's active-dataset selector is drawn here so every page shares it.
"""

from __future__ import annotations

import streamlit as st

from pages.common import sidebar_dataset_selector
from pages.nav import PAGES

st.set_page_config(page_title="RecSys Explorer", page_icon=":material/recommend:", layout="wide")

navigation = st.navigation(
    [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES],
)
sidebar_dataset_selector()
navigation.run()
