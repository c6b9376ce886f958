"""RecSys Explorer: the Streamlit entry point (`streamlit run app.py`), in two roles.

- `streamlit run app.py` finds the `st.App` below (Streamlit reads this file's syntax tree for it) and serves
  it with uvicorn: the server imports this file as the module `app` (the `else` branch) and every request,
  page and websocket first passes the gate (`views/ui/gate.py`: with `RECSYS_PASSWORD` set, nothing answers
  before sign-in). Each browser session then runs this same file as its script, under the name `__main__`
  (as `AppTest.from_file("app.py")` does too): the navigation branch.
- The navigation branch registers the pages from `views.ui.nav.PAGES`. They live in `views/`, not `pages/`:
  Streamlit turns a `pages/` folder into its legacy file-name menu whenever a session opens a page's URL
  before `st.navigation` has run (a shared link, a reload after a restart), so that folder name is never
  used. Every page run is inside one error boundary (`views.ui.common.error_boundary`): a visitor sees an
  error's message and what to do, never a traceback or a server path.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

if __name__ == "__main__":  # a session's script run
    from recsys_core.threads import interactive_threads, use_threads
    from recsys_core.workspace.registry import start_sweeper
    from views.ui.auth import sign_out_link
    from views.ui.common import error_boundary, workspace
    from views.ui.nav import PAGES
    from views.ui.warmup import start_warmups

    st.set_page_config(page_title="RecSys Explorer", page_icon=":material/recommend:", layout="wide")
    use_threads(interactive_threads())  # clicks use one thread by default: see recsys_core/threads.py
    start_warmups()  # once per process, in the background: the local LLM now, not on a visitor's first blurb
    start_sweeper(workspace())  # once per process: leftovers of killed saves and imports go on a timer
    navigation = st.navigation(
        [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES],
    )
    sign_out_link()
    with error_boundary():
        navigation.run()
else:  # imported by `streamlit run app.py` (or `uvicorn app:app`): the server
    from views.ui.gate import middleware

    def _script_error(exc: Exception) -> bool:
        """What escapes the navigation's boundary (a widget callback, a fragment's rerun) is shown the same way."""
        from views.ui.common import show_unexpected

        show_unexpected(exc)
        return True  # Streamlit's own exception box (with its traceback) stays hidden

    app = st.App(Path(__file__).resolve(), middleware=middleware(), on_script_error=_script_error)
