"""The page side of the shared password: the gate itself is server-side (`views/ui/gate.py`), so a session
that runs a page has signed in already; pages only offer the way out."""

from __future__ import annotations

import html

import streamlit as st

from views.ui.gate import SIGNOUT, password


def sign_out_link() -> None:
    """A "Sign out" link in the sidebar when the server has a password (relative, so a base URL path holds)."""
    if password():
        href = html.escape(SIGNOUT.lstrip("/"), quote=True)  # a constant today; escaped like any text put in HTML
        st.sidebar.markdown(f'<a href="{href}" target="_self">Sign out</a>', unsafe_allow_html=True)
