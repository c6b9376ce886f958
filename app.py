"""RecSys Explorer: the Streamlit entry point (`streamlit run app.py`).

Pages are registered explicitly from `views.ui.nav.PAGES`. They live in `views/`, not `pages/`: Streamlit
turns a `pages/` folder into its legacy file-name menu whenever a session opens a page's URL before
`st.navigation` has run (a shared link, a reload after a restart), so that folder name is never used.
With `RECSYS_PASSWORD` set, a session sees only a sign-in page until it gives the password (`views/ui/auth.py`).
"""

from __future__ import annotations

import streamlit as st

from recsys_core.threads import interactive_threads, use_threads
from views.ui.auth import password_page, password_required
from views.ui.nav import PAGES
from views.ui.warmup import start_warmups

st.set_page_config(page_title="RecSys Explorer", page_icon=":material/recommend:", layout="wide")
use_threads(interactive_threads())  # clicks use one thread by default: see recsys_core/threads.py
start_warmups()  # once per process, in the background: the local LLM now, not on a visitor's first blurb

if password_required():  # RECSYS_PASSWORD is set: a session sees only the sign-in page until it gives it
    navigation = st.navigation([st.Page(password_page, title="Sign in", icon=":material/lock:")])
else:
    navigation = st.navigation(
        [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES],
    )
navigation.run()
