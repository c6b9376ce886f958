"""The UI's one helper module: cached loaders, the active-dataset selector, message rendering.

Importable as `views.ui.common` both under `streamlit run app.py` and under `AppTest.from_file("app.py")`
(Streamlit puts the entry point's folder on `sys.path`). Pages stay thin: read state, call the
engine through these wrappers, draw.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from recsys_core.data.dataset import ORDER_TIMESTAMP, Dataset
from recsys_core.data.demo import DEMO_NAME
from recsys_core.errors import RecsysError
from recsys_core.recommend.catalogue import Catalogue, catalogue_of
from recsys_core.workspace.registry import ENV_VAR, DatasetRecord, Workspace
from recsys_core.workspace.visible import visible_text
from views.ui import charts, state

_LOG = logging.getLogger("recsys.pages")
ACTIVE_KEY = "active_dataset"  # plain state: the dataset every page works on
_SIDEBAR_KEY = "sidebar_dataset"  # the sidebar widget mirroring it
LAST_ACTIVE_SETTING = "last_active_dataset"  # workspace setting: where a new tab opens
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:@])")
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|mailto|www)(?=[:.])")


# ---- cached loaders ------------------------------------------------------------------------------


def _root_key() -> str:
    """The workspace folder as `Workspace` resolves it; part of every cache key so tests with a
    temporary RECSYS_WORKSPACE never see another workspace's cached objects."""
    return str(Path(os.environ.get(ENV_VAR) or "workspace").resolve())


@st.cache_resource(show_spinner=False)
def _workspace(root: str) -> Workspace:
    ws = Workspace(root)
    ws.ensure_demo()  # the app opens on the demo with zero clicks
    return ws


def workspace() -> Workspace:
    """The workspace of this process (created, with the demo saved, on first use)."""
    return _workspace(_root_key())


@st.cache_resource(show_spinner="Loading dataset...", max_entries=4)
def _dataset(root: str, name: str, version: str) -> Dataset:
    # `version` (folder of this save) is only a cache key: a re-saved name gets a new entry.
    return _workspace(root).load_dataset(name)


@st.cache_data(show_spinner=False, max_entries=16)
def _stats(root: str, name: str, version: str) -> dict:
    return _dataset(root, name, version).stats()


@st.cache_data(show_spinner=False, max_entries=16)
def _chart_frames(root: str, name: str, version: str) -> dict:
    ds = _dataset(root, name, version)
    labels = catalogue_of(ds).labels  # hover names each item as every page does
    frames = {
        "users": charts.long_tail_frame(np.diff(ds.indptr), labels=ds.user_ids),
        "items": charts.long_tail_frame(ds.item_popularity, labels=labels),
    }
    if ds.has_ratings:
        frames["ratings"] = charts.ratings_frame(ds.interactions["rating"].to_numpy())
    if ds.has_counts:
        frames["counts"] = charts.counts_frame(ds.interactions["count"].to_numpy())
    if ds.order == ORDER_TIMESTAMP and ds.n_interactions:  # file positions are not times
        frames["activity"], frames["period"] = charts.activity_frame(ds.interactions["timestamp"].to_numpy())
    return frames


def _version(record: DatasetRecord) -> str:
    return f"{record.created_at}|{record.path}"


def load_dataset(record: DatasetRecord) -> Dataset:
    """The saved dataset behind `record`, loaded once per save."""
    return _dataset(_root_key(), record.name, _version(record))


def dataset_stats(record: DatasetRecord) -> dict:
    """`Dataset.stats()` of the saved dataset, cached per save."""
    return _stats(_root_key(), record.name, _version(record))


def chart_frames(record: DatasetRecord) -> dict:
    """Frames behind the statistics charts (long tails, ratings, activity), cached per save."""
    return _chart_frames(_root_key(), record.name, _version(record))


# ---- the active dataset --------------------------------------------------------------------------


def active_record() -> DatasetRecord:
    """Record of the active dataset: the session's choice if still saved, else the demo."""
    ws = workspace()
    records = {r.name: r for r in ws.list_datasets()}
    if not records:  # the demo was deleted behind our back (e.g. from the CLI): bring it back
        ws.ensure_demo()
        records = {r.name: r for r in ws.list_datasets()}
    name = st.session_state.get(ACTIVE_KEY)
    if name not in records:
        # A new session (reload, shared link, new tab): the link's dataset, else where the workspace's
        # users last were, else the demo.
        candidates = (state.url_value("dataset"), ws.get_setting(LAST_ACTIVE_SETTING), DEMO_NAME)
        name = next((c for c in candidates if c in records), next(iter(records)))
        st.session_state[ACTIVE_KEY] = name
    return records[name]


def set_active(name: str) -> None:
    """Make `name` the active dataset (takes effect in the sidebar on the next run) and remember it in the
    workspace, so a new tab opens on it too."""
    st.session_state[ACTIVE_KEY] = name
    workspace().set_setting(LAST_ACTIVE_SETTING, name)


def _on_sidebar_pick() -> None:
    set_active(st.session_state[_SIDEBAR_KEY])


def sidebar_dataset_selector() -> DatasetRecord:
    """Draw the active-dataset selector in the sidebar and return the active record."""
    record = active_record()
    names = [r.name for r in workspace().list_datasets()]
    # Set before the widget exists in this run, so a page's `set_active` + rerun shows up here.
    st.session_state[_SIDEBAR_KEY] = record.name
    st.sidebar.selectbox("Active dataset", names, key=_SIDEBAR_KEY, on_change=_on_sidebar_pick,
                         help="Every page works on this dataset. Load new ones on the Data page.")
    state.write_url("dataset", record.name)
    st.sidebar.caption(f"{record.n_users:,} users · {record.n_items:,} items · {record.n_interactions:,} interactions")
    return record


# ---- rendering helpers ---------------------------------------------------------------------------


def md_escape(text: object) -> str:
    """Escape user-supplied text (file names, titles, error messages) for Streamlit Markdown."""
    # Streamlit's Markdown links bare URLs even when escaped: an invisible word joiner after the scheme
    # (or "www") keeps a title such as `<a href="https://...">` plain text.
    text = _AUTOLINK.sub("\\1\u2060", str(text))
    return _MD_SPECIAL.sub(r"\\\1", text)


def labelled(frame: pd.DataFrame, catalogue: Catalogue) -> pd.DataFrame:
    """`frame` (one row per item, with its `item_id`) with its `title` column holding each item's catalogue label:
    the one name an item has on every page, in the CLI and in the API ("Title (year)", or "item <id>")."""
    rows = frame["item_id"].astype(str).map(catalogue.index).to_numpy(dtype=np.int64)
    return frame.assign(title=catalogue.labels[rows])


def plural(count: int, noun: str) -> str:
    """"1 item", "2 items", "1,214 items": counts in words, never "1 items"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def show_data_error(err: RecsysError, what: str = "Could not load the data") -> None:
    """One error box: where and what went wrong, a few offending values, and what to do. No traceback."""
    headline, root = str(err), _root_key()  # the server's folders are named as a visitor knows them
    for marker in ("\nExamples:", "\nWhat to do:"):  # RecsysError appends these after the message
        headline = headline.split(marker, 1)[0]
    body = f"**{what}.** {md_escape(visible_text(root, headline))}"
    if err.examples:
        lines = visible_text(root, "\n".join(str(e) for e in err.examples[:5]))
        fence = "`" * max(3, _longest_backtick_run(lines) + 1)
        body += f"\n\nExamples:\n\n{fence}text\n{lines}\n{fence}"
    if err.hint:
        body += f"\n\n**What to do:** {md_escape(visible_text(root, err.hint))}"
    st.error(body, icon=":material/error:")


def show_unexpected(err: Exception) -> str:
    """Show an error that escaped a page: a `RecsysError`'s message and what to do; anything else as a
    generic message with an incident id, the traceback going to the server log only. Returns the id."""
    incident = secrets.token_hex(4)
    _LOG.error("incident %s on a page", incident, exc_info=err)
    if isinstance(err, RecsysError):
        show_data_error(err, "This did not work")
    else:
        st.error(f"**Something went wrong on the server** (incident `{incident}`). The page could not finish; "
                 "try again, and if it happens again, give the operator this incident id.",
                 icon=":material/error:")
    return incident


@contextmanager
def error_boundary() -> Iterator[None]:
    """Around every page run (`app.py`): an exception the page did not handle is shown by `show_unexpected`,
    never as a traceback. Streamlit's rerun and stop are not exceptions of this kind and pass through."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - the last line of defence: nothing reaches the visitor raw
        show_unexpected(err)


def _longest_backtick_run(text: str) -> int:
    runs = re.findall(r"`+", text)
    return max((len(r) for r in runs), default=0)


def records_frame(records: list[DatasetRecord]) -> pd.DataFrame:
    """Saved datasets as a table (newest first)."""
    return pd.DataFrame({
        "name": [r.name for r in records],
        "users": [r.n_users for r in records],
        "items": [r.n_items for r in records],
        "interactions": [r.n_interactions for r in records],
        "source": [r.source_file for r in records],
        "saved (UTC)": [r.created_at.replace("T", " ").replace("+00:00", "") for r in records],
    })
