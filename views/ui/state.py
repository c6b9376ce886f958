"""View state that survives a reload and travels in a shared link: `st.query_params` mirrors it.

A page binds a widget to a URL parameter *before* drawing it: on the session's first run the URL's
value (if valid) seeds the widget, and after every run the widget's value is written back, so the
address bar always describes what is on screen. Session state stays the source of truth while a tab
lives; the URL is only read when the session has no value yet (a reload, a link from a colleague).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import streamlit as st

_SEEDED_KEY = "_url_seeded"  # session state: keys already offered the URL's value


def url_value(param: str) -> str | None:
    """The URL's value for `param`, or None."""
    value = st.query_params.get(param)
    return None if value in (None, "") else str(value)


def write_url(param: str, value: Any) -> None:
    """Put `value` in the URL (or remove `param` when None or empty); a no-op when it is already there, so a
    rerun does not rewrite the address bar."""
    if value is None or value == "":
        if param in st.query_params:
            del st.query_params[param]
        return
    text = str(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def _first_look(key: str) -> bool:
    """True the first time a session asks for `key`: the URL describes how a tab opened, so a page that
    later clears its own state (a new user drops the old item) must not get the link's value back."""
    seen = st.session_state.setdefault(_SEEDED_KEY, set())
    if key in seen:
        return False
    seen.add(key)
    return True


def seed_from_url(key: str, param: str, parse: Callable[[str], Any] = str,
                  options: Sequence[Any] | None = None) -> None:
    """Before the widget `key` is drawn: take its value from the URL when the session has none yet.
    A value that does not parse, or is not among `options`, is ignored (a stale or hand-edited link)."""
    if not _first_look(key) or key in st.session_state:
        return
    raw = url_value(param)
    if raw is None:
        return
    try:
        value = parse(raw)
    except (TypeError, ValueError):
        return
    if options is not None and value not in options:
        return
    st.session_state[key] = value


def bind(key: str, param: str, default: Any, parse: Callable[[str], Any] = str,
         options: Sequence[Any] | None = None) -> None:
    """Before drawing widget `key`: its value comes from the session, else the URL, else `default`, and
    goes back into the URL. Draw the widget *without* its own default value (`value=`/`index=`):
    Streamlit warns on screen when a widget gets both a default and a value set through session state."""
    seed_from_url(key, param, parse, options)
    if key not in st.session_state or (options is not None and st.session_state[key] not in options):
        st.session_state[key] = default
    write_url(param, st.session_state[key])


def seed_index_from_url(key: str, param: str, index: Mapping[str, int]) -> None:
    """Plain state `key` holding a row number (a user, an item) from the URL's id, when the session has
    none yet. Ids travel in the URL, not row numbers: a link stays right after the dataset is re-saved."""
    if not _first_look(key) or key in st.session_state:
        return
    raw = url_value(param)
    if raw is not None and raw in index:
        st.session_state[key] = int(index[raw])


def write_id(param: str, ids: Sequence[Any], row: int | None) -> None:
    """Put the id of row `row` of `ids` in the URL (remove the parameter when None)."""
    write_url(param, None if row is None else str(ids[row]))
