"""An optional shared password for a team deployment: set `RECSYS_PASSWORD` and every session asks for it
once before any page shows anything. Unset (the default, a local single-user app), nothing is asked."""

from __future__ import annotations

import hmac
import os
import time

import streamlit as st

PASSWORD_ENV = "RECSYS_PASSWORD"
_OK_KEY = "auth_ok"  # session state: this session gave the password


def password_required() -> bool:
    """True while this session still has to give the operator's password."""
    return bool(os.environ.get(PASSWORD_ENV)) and not st.session_state.get(_OK_KEY)


def password_page() -> None:
    """The sign-in form: the only page a session sees until it gives the password."""
    st.title("RecSys Explorer")
    st.caption("This server is shared: enter the password its operator gave you.")
    with st.form("auth_form"):
        typed = st.text_input("Password", type="password", key="auth_password")
        submitted = st.form_submit_button("Enter", type="primary")
    if submitted:
        if hmac.compare_digest(typed.encode(), os.environ.get(PASSWORD_ENV, "").encode()):
            st.session_state[_OK_KEY] = True
            st.rerun()
        time.sleep(1.0)  # slows guessing down
        st.error("Wrong password. Ask the operator of this server for it.")


def require_password() -> None:
    """Show the sign-in form and stop the run unless the session may see pages (for pages run directly)."""
    if password_required():
        password_page()
        st.stop()
