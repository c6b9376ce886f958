"""The page side of the shared password: the gate itself is server-side (`views/ui/gate.py`), so a session
that runs a page has signed in already; pages only offer the way out."""

from __future__ import annotations

import streamlit as st

from views.ui.gate import SIGNOUT, password


def sign_out_link() -> None:
    """A "Sign out" link in the sidebar when the server has a password (relative, so a base URL path holds)."""
    if password():
        st.sidebar.markdown(f'<a href="{SIGNOUT.lstrip("/")}" target="_self">Sign out</a>', unsafe_allow_html=True)
