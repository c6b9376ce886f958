"""Recommend: top-K for any user, what-if edits of a history, cold-start users, similar items,
a second model side by side, and exports. Every list comes from `recsys_core.recommend.topk`."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import streamlit as st

from recsys_core.errors import RecsysError
from recsys_core.models.base import capabilities_of
from recsys_core.recommend.catalogue import catalogue_of, ranked_runs
from recsys_core.recommend.export import export_bytes, export_table, export_work
from recsys_core.recommend.topk import (
    history_frame,
    overlap,
    pick_user,
    rank_changes,
    search_items,
    similar_items,
    similar_items_text,
)
from recsys_core.recommend.usecases import Query, allowed_items
from views.ui import jobs, state
from views.ui.common import labelled, md_escape, plural, show_data_error, workspace
from views.ui.model_state import cached_model, code_panel, page_dataset_and_model, recommendations, run_label
from views.ui.nav import PAGES

# Agreed with the Explain page: the user and item (indices) it opens on.
EXPLAIN_USER_KEY, EXPLAIN_ITEM_KEY = "explain_user", "explain_item"
EXPLAIN_PAGE = "views/explain.py"
USER_KEY = "rec_user"
MAX_OPTIONS = 3000  # item pickers list at most this many items; bigger catalogues are searched by title first
MAX_USER_OPTIONS = 50_000  # above this many users, the user is typed rather than picked from a list
SHOWN = ["rank", "title", "score", "genres", "year", "popularity", "item_id"]
METADATA = ("genres", "year")

st.title("Recommend")
record, ds, model, which = page_dataset_and_model()
st.caption(f"Dataset **{md_escape(record.name)}** · model: {md_escape(which)}. Change the model on the Train page.")
jobs.running_jobs_panel("rec")
catalogue = catalogue_of(ds)  # ids, one label per item, popularity: computed once per dataset version
titles = catalogue.labels  # tables, pickers and captions name an item by this label, as the CLI and the API do


def _item_label(i: int) -> str:
    return str(titles[i])


def _table(frame: pd.DataFrame, key: str, **kw) -> None:
    """A read-only table in a container keyed `key` (display tables carry no key tests could find)."""
    with st.container(key=key):
        st.dataframe(frame, hide_index=True, key=f"{key}_table", **kw)


def _filled(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The `columns` of `frame` that hold some value: metadata the data lacks (no years) is left out rather than
    shown as a column of "None"."""
    return [c for c in columns if c in frame.columns and (frame.empty or bool(_has_value(frame[c]).any()))]


def _has_value(column: pd.Series) -> pd.Series:
    """Cells that say something: not missing, and for item metadata not an empty text (items without genres
    have ''); a marker column such as 'shared' means "no" by its empty cells and stays."""
    present = column.notna()
    return present & (column.astype(str).str.strip() != "") if column.name in METADATA else present


def _show(frame: pd.DataFrame, key: str, extra: tuple[str, ...] = ()) -> None:
    frame = labelled(frame, catalogue)
    cols = _filled(frame, [*SHOWN[:2], *extra, *SHOWN[2:]])
    if frame.attrs.get("fallback"):  # the "scores" are interaction counts: the popularity column says it plainly
        cols = [c for c in cols if c != "score"]
    _table(frame[cols], key, column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                            "similarity": st.column_config.NumberColumn(format="%.3f")})


def _catalogue_options(key: str, first: list[int]) -> list[int]:
    """`first`, then every item by popularity; a big catalogue is narrowed by a title search box instead."""
    popular = catalogue.by_popularity
    if ds.n_items <= MAX_OPTIONS:
        rest = popular
    else:
        query = st.text_input("Search titles", key=f"{key}_query", help="Narrows the list below.")
        rest = search_items(ds.items, query, 200, ds.item_popularity) if query.strip() else popular[:200]
    return list(dict.fromkeys([*first, *(int(i) for i in rest)]))


def _item_picker(label: str, key: str, help_: str) -> list[int]:
    """A multiselect over items, searchable by title (what is already chosen always stays listed)."""
    options = _catalogue_options(key, list(st.session_state.get(key, [])))
    return st.multiselect(label, options, format_func=_item_label, key=key, help=help_)


# ---- the user -------------------------------------------------------------------------------------


def _pick(kind: str) -> None:
    st.session_state[USER_KEY] = pick_user(ds, kind, seed=int(datetime.now(UTC).timestamp() * 1e6) % 2**32)


def _user_picker() -> int:
    state.seed_index_from_url(USER_KEY, "user", ds.user_index)  # a reload or a shared link keeps the user
    if st.session_state.get(USER_KEY, 0) >= ds.n_users:
        st.session_state[USER_KEY] = 0  # the dataset changed under the session
    cols = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    with cols[0]:
        if ds.n_users <= MAX_USER_OPTIONS:
            user = st.selectbox("User", range(ds.n_users), format_func=lambda u: str(ds.user_ids[u]), key=USER_KEY,
                                help="Type to search by user id.")
        else:
            typed = st.text_input("User id", value=str(ds.user_ids[st.session_state.get(USER_KEY, 0)]),
                                  key="rec_user_typed")
            user = ds.user_index.get(typed.strip())
            if user is None:
                st.error(f"No user {md_escape(typed)} in this dataset.")
                st.stop()
            st.session_state[USER_KEY] = user
    cols[1].button("Random user", key="rec_random", on_click=_pick, args=("random",))
    cols[2].button("Long history", key="rec_long", on_click=_pick, args=("long",),
                   help="A user among the 10% with the longest histories.")
    cols[3].button("Short history", key="rec_short", on_click=_pick, args=("short",),
                   help="A user among the 10% with the shortest histories.")
    return int(user)


user = _user_picker()
state.write_id("user", ds.user_ids, user)
history = ds.history(user)

# ---- settings and filters -------------------------------------------------------------------------

with st.sidebar:
    st.subheader("Recommendations")
    state.bind("rec_k", "k", 10, parse=int, options=range(5, 51, 5))
    k = st.slider("How many (K)", 5, 50, step=5, key="rec_k")
    genres = catalogue.genres
    chosen_genres = st.multiselect("Genres (any of)", genres, key="rec_genres") if genres else []
    years = None
    if catalogue.year_range is not None:
        lo, hi = catalogue.year_range
        years = st.slider("Year", lo, hi, (lo, hi), key="rec_years")
        years = None if years == (lo, hi) else years
    hide_pct = st.slider("Hide the most popular items (%)", 0, 50, 0, step=1, key="rec_hide_popular",
                         help="Drop this share of the catalogue, most interacted-with first, to surface the long tail.")

# The page's settings as the engine's query: the CLI (`recsys recommend`) and the API (`recsys serve`) take the same.
options = {"k": k, "any_of": {"genres": chosen_genres} if chosen_genres else {},
           "between": {"year": years} if years else {}, "hide_popular_top": hide_pct / 100}
user_query = Query.of(user=str(ds.user_ids[user]), **options)


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.attrs.get("fallback"):
        st.info(f"Most popular items shown: {frame.attrs['note']}.", icon=":material/info:")
    return frame


def _recs(hist: np.ndarray | list[int], on=None) -> pd.DataFrame:
    """Top-K for a history of item indices with the page's settings (`on`: another model)."""
    ids = catalogue.item_ids[np.asarray(hist, dtype=np.int64)]
    return _shown(recommendations(on or model, ds, Query.of(history=ids, **options)))


recs = _shown(recommendations(model, ds, user_query))
if user_query.any_of or user_query.between or user_query.hide_popular_top:
    allowed = allowed_items(catalogue, user_query)
    st.caption(f"Filters leave {int(allowed.sum()):,} of {ds.n_items:,} items as candidates.")
left, right = st.columns([2, 3])
with left:
    st.subheader(f"History of {md_escape(ds.user_ids[user])}")
    count = f"{len(history)} interaction{'s' if len(history) != 1 else ''}"
    st.caption(f"{count}, newest first." if ds.is_ordered else
               f"{count}, the file's last row first: this dataset has no timestamps, so their order is unknown.")
    timeline = labelled(history_frame(ds, user), catalogue)
    shown = _filled(timeline, ["title", "genres", "year", "rating", "count", "date"])
    _table(timeline[shown], "rec_history",  # a count (plays, clicks) is how much, shown as a whole number
           column_config={"date": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                          "count": st.column_config.NumberColumn(format="%d")})
with right:
    st.subheader(f"Top {k} for this user")
    st.caption("Items the user has seen are never recommended.")
    _show(recs, "rec_topk")
code_panel(record.name, user_query)

# ---- explain hook ---------------------------------------------------------------------------------

if len(recs):
    cols = st.columns([3, 1], vertical_alignment="bottom")
    item_to_explain = cols[0].selectbox("Why this recommendation?", recs["item"].tolist(), format_func=_item_label,
                                        key="rec_explain_item")
    explain_ready = any(p.path == EXPLAIN_PAGE for p in PAGES)
    if cols[1].button("Explain it", key="rec_explain", disabled=not explain_ready,
                      help=None if explain_ready else "The Explain page is not installed."):
        st.session_state[EXPLAIN_USER_KEY] = user
        st.session_state[EXPLAIN_ITEM_KEY] = int(item_to_explain)
        st.switch_page(EXPLAIN_PAGE)

# ---- what-if --------------------------------------------------------------------------------------

st.subheader("What if the history were different?")
unique_history = list(dict.fromkeys(int(i) for i in history))
cols = st.columns(2)
with cols[0]:
    removed = st.multiselect("Remove from the history", unique_history, format_func=_item_label,
                             key=f"rec_remove_{user}")
with cols[1]:
    added = _item_picker("Add to the history (as the newest items)", f"rec_add_{user}",
                         "Type to search by title.")
if removed or added:
    gone = set(removed)
    edited = np.array([i for i in history if int(i) not in gone] + [i for i in added if i not in gone], dtype=np.int64)
    after = _recs(edited)
    changes = rank_changes(recs, after)
    changes["title"] = titles[changes["item"].to_numpy()]
    changes["item_id"] = ds.item_ids[changes["item"].to_numpy()].astype(str)
    st.caption(f"Scored on the edited history of {plural(len(edited), 'item')}. ↑/↓: places moved since the original list; "
               "new: not in it before; dropped: fell out of the top K.")
    _table(changes[["rank_now", "label", "title", "rank_before", "item_id"]], "rec_whatif",
           column_config={"rank_now": "rank", "label": "change", "rank_before": "rank before"})
else:
    st.caption("Remove or add items to see how the recommendations move.")

# ---- cold start -----------------------------------------------------------------------------------

st.subheader("A new user")
liked = _item_picker("Items the new user likes", "rec_cold_liked", "Type to search by title.")
cold = _recs(np.asarray(liked, dtype=np.int64))
st.caption("Recommendations for someone with no history in the dataset, from these items alone.")
_show(cold, "rec_cold")

# ---- similar items --------------------------------------------------------------------------------

st.subheader("Similar items")


def _text_tower():
    for run in (r for r in ranked_runs(workspace(), record.name) if capabilities_of(r.model, r.config).text):
        try:
            tower = cached_model(run.artifact_dir)
        except Exception:  # noqa: BLE001, S112  a damaged artifact: try the next run
            continue
        if tower.fits(ds):
            return tower, run
    return None, None


picked = st.session_state.get("rec_similar_item")
near_options = _catalogue_options("rec_similar_item", [*([picked] if picked is not None else []),
                                                       *recs["item"].tolist(), *unique_history[::-1]])
anchor = st.selectbox("Items similar to", near_options, index=None, format_func=_item_label, key="rec_similar_item",
                      placeholder="Pick an item",
                      help="This user's recommendations and history first, then the most popular items.")
if anchor is not None:
    cols = st.columns(2)
    with cols[0]:
        st.caption(f"By the model's item embeddings ({model.family}), cosine similarity.")
        try:
            _show(similar_items(model, int(anchor), k, items=ds.items, popularity=ds.item_popularity),
                  "rec_similar", extra=("similarity",))
        except RecsysError as err:
            show_data_error(err, "No similar items from this model")
    with cols[1]:
        tower, tower_run = _text_tower()
        if tower is None:
            st.caption("Train a text tower on this dataset (Train page) to see neighbours by item text too.")
        else:
            st.caption(f"By item text (text tower, run #{tower_run.id}), cosine similarity.")
            _show(similar_items_text(tower, int(anchor), k, items=ds.items, popularity=ds.item_popularity),
                  "rec_similar_text", extra=("similarity",))

# ---- side by side ---------------------------------------------------------------------------------

st.subheader("Side by side with another model")
runs = [r for r in workspace().list_runs(dataset=record.name) if r.artifact_dir]
second = st.selectbox("Second model", runs, index=None, format_func=run_label, key="rec_second",
                      placeholder="Pick a run on this dataset")
if second is not None:
    try:
        other = cached_model(second.artifact_dir)
        other.check_fits(ds)
        other_recs = _shown(recommendations(other, ds, user_query))
    except RecsysError as err:
        show_data_error(err, "Could not use this run")
    else:
        agree = overlap(recs, other_recs)
        st.caption(f"Overlap: {len(agree['shared'])} of {k} items in common (Jaccard {agree['jaccard']:.2f}). "
                   "Shared items are marked ✓.")
        cols = st.columns(2)
        for col, frame, name, key in ((cols[0], recs, f"Active model ({model.family})", "rec_side_a"),
                                      (cols[1], other_recs, run_label(second), "rec_side_b")):
            with col:
                st.markdown(f"**{md_escape(name)}**")
                marked = frame.assign(shared=np.where(frame["item"].isin(agree["shared"]), "✓", ""))
                _show(marked, key, extra=("shared",))

# ---- export ---------------------------------------------------------------------------------------

st.subheader("Export")
stem = f"recs-{record.name}-{ds.user_ids[user]}"
mine = export_table(recs, ds.user_ids[user])  # the same columns as the all-users export
cols = st.columns(2)
cols[0].download_button("This user's list (CSV)", export_bytes(mine, "csv"), f"{stem}.csv", "text/csv",
                        key="rec_dl_user_csv")
cols[1].download_button("This user's list (Parquet)", export_bytes(mine, "parquet"), f"{stem}.parquet",
                        "application/octet-stream", key="rec_dl_user_parquet")
export_params = {"model": model.identity, "version": f"{record.created_at}|{record.path}", "k": k,
                 "hide_pct": hide_pct, "genres": sorted(chosen_genres), "years": list(years) if years else None}


def _start_export(params: dict, allowed: np.ndarray) -> None:
    work = export_work(model, ds, params["k"], allowed=allowed)
    jobs.start("export", record.name, params, work, f"Top {params['k']} for all {ds.n_users:,} users ({which})")


@st.cache_data(show_spinner=False, max_entries=2)
def _export_files(root: str, job_id: int, updated_at: str) -> tuple[bytes, bytes, int]:
    """(CSV, Parquet, rows) of a finished export job; keyed by the job, so each tab converts it once."""
    table = jobs.store().load_result(job_id)["table"]
    return export_bytes(table, "csv"), export_bytes(table, "parquet"), len(table)


export_job = jobs.current("export", record.name, export_params)
if export_job is not None and export_job.active:
    jobs.follow("export", record.name, export_params, "rec_export")
else:
    export_allowed = allowed_items(catalogue, user_query)
    st.button(f"Prepare top {k} for all {ds.n_users:,} users", key="rec_export_prepare", on_click=_start_export,
              args=(export_params, export_allowed),
              help="Scores every user in batches with the settings above, as a job of the workspace: any tab "
                   "sees its progress and can cancel it, and the file stays ready after a reload.")
    jobs.ended_note(export_job)
done = jobs.store().latest("export", record.name, export_params)
if done is not None and not (export_job is not None and export_job.active):
    try:
        csv_bytes, parquet_bytes, n_rows = _export_files(str(workspace().root), done.id, done.updated_at)
    except (OSError, ValueError, KeyError):
        st.warning("The prepared export's file is gone from the workspace; prepare it again.")
    else:
        st.caption(f"{n_rows:,} rows ready (CSV cells that look like formulas get a leading apostrophe).")
        cols = st.columns(2)
        cols[0].download_button("All users (CSV)", csv_bytes, f"recs-{record.name}-all.csv", "text/csv",
                                key="rec_dl_all_csv")
        cols[1].download_button("All users (Parquet)", parquet_bytes, f"recs-{record.name}-all.parquet",
                                "application/octet-stream", key="rec_dl_all_parquet")
