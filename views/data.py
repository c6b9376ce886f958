"""Data: upload interactions, map columns, validate, and inspect the statistics of any saved dataset."""

from __future__ import annotations

import dataclasses

import streamlit as st

from recsys_core.data.demo import DEMO_NAME
from recsys_core.errors import RecsysError
from views.ui import charts, upload
from views.ui.common import (
    active_record,
    chart_frames,
    dataset_stats,
    md_escape,
    records_frame,
    set_active,
    show_data_error,
    sidebar_dataset_selector,
    workspace,
)

_RAW = "data_raw"  # session state: {"sig": upload signature, "raw": upload.Preview | None, "error": DataError | None}
_OUTCOME = "data_outcome"  # session state: result of the last Load click, kept until the file changes
_CONFIRM = "data_confirm_delete"  # session state: name awaiting delete confirmation


def _signature(file) -> str:
    return f"{file.file_id}|{file.name}|{file.size}"


def _parsed(file) -> dict:
    """The uploaded file parsed once per upload (not on every rerun); mapping widgets reset on a new file."""
    sig = _signature(file)
    state = st.session_state.get(_RAW)
    if state is None or state["sig"] != sig:
        try:
            state = {"sig": sig, "raw": upload.preview(file.getvalue(), file.name), "error": None}
        except RecsysError as err:
            state = {"sig": sig, "raw": None, "error": err}
        st.session_state[_RAW] = state
        st.session_state.pop(_OUTCOME, None)
        for role in upload.ROLES:  # new columns: forget the previous file's choices
            st.session_state.pop(f"data_map_{role}", None)
        st.session_state["data_name"] = upload.safe_name(file.name)
    return state


def _preview(found) -> None:
    raw = found.raw
    st.caption(
        f"Detected: format **{md_escape(raw.format)}**, delimiter **{md_escape(repr(raw.delimiter))}**, "
        f"header **{'yes' if raw.has_header else 'no'}**, encoding **{md_escape(raw.encoding)}**, "
        f"{raw.n_rows:,} rows. First rows:"
    )
    head = raw.frame.head(10)  # headed as the mapping names them ("column 1"), not pandas' 0-based labels
    st.dataframe(head.rename(columns={c: upload.column_label(c) for c in head.columns}), hide_index=True,
                 key="data_preview")


def _mapping_form(found) -> dict[str, str]:
    defaults, problem, reasons = upload.default_mapping(found)
    if problem is not None:
        st.warning(f"Column detection needs your help: {md_escape(problem)}", icon=":material/help:")
    for reason in reasons:
        st.caption(md_escape(reason))
    columns = list(found.raw.frame.columns)
    labels = {"user": "User column", "item": "Item column", "rating": "Rating column (optional)",
              "count": "Count column (optional)", "timestamp": "Timestamp column (optional)"}
    helps = {"rating": "A bounded score (1-5 stars, 0-10).",
             "count": "How much, not how good: plays, clicks, purchases. Counts weigh interactions as log(1 + count).",
             "timestamp": "Without one, the order of each user's interactions is unknown (see the options below)."}
    chosen = {}
    for col, role in zip(st.columns(len(upload.ROLES)), upload.ROLES, strict=True):
        options = columns + [upload.NONE] if role in upload.OPTIONAL_ROLES else columns
        default = defaults[role] if defaults[role] in options else options[0]
        chosen[role] = col.selectbox(labels[role], options, index=options.index(default), key=f"data_map_{role}",
                                     format_func=upload.column_label, help=helps.get(role))
    return chosen


def _options_form(has_timestamp: bool):
    with st.expander("Options: implicit feedback, k-core filtering, duplicates, order"):
        c1, c2, c3, c4 = st.columns(4)
        implicit = c1.checkbox("Implicit feedback", key="data_implicit",
                               help="Keep only interactions whose rating (or, for a file of counts, count) is at or "
                                    "above the threshold.")
        threshold = c1.number_input("Keep rating or count ≥", value=4.0, step=0.5, key="data_threshold",
                                    disabled=not implicit)
        min_user = c2.number_input("Min. interactions per user", min_value=1, value=1, step=1, key="data_min_user",
                                   help="k-core: users and items below these counts are removed repeatedly.")
        min_item = c3.number_input("Min. interactions per item", min_value=1, value=1, step=1, key="data_min_item")
        dedup = c4.selectbox("Repeated user-item pairs", upload.DUPLICATE_POLICIES, key="data_dedup",
                             format_func=upload.DEDUP_LABELS.get)
        file_order = st.checkbox(
            "No timestamp column: the file lists each user's interactions in time order", key="data_file_order",
            disabled=has_timestamp,
            help="Only if it is true: then a user's last row is their latest interaction, and sequential models can "
                 "train. Otherwise the order is unknown: a random interaction per user is held out for testing.")
    options = upload.make_options(threshold if implicit else None, int(min_user), int(min_item), dedup)
    return dataclasses.replace(options, file_order_is_time=bool(file_order) and not has_timestamp)


def _load_section() -> None:
    st.subheader("Load a file")
    file = st.file_uploader("Interactions file (CSV, TSV, Parquet, JSONL, MovieLens .dat / u.data, or a .zip)",
                            type=upload.INTERACTION_TYPES, key="data_file", max_upload_size=upload.MAX_UPLOAD_MB)
    items_file = st.file_uploader("Item metadata (optional: id, title, genres...)", type=upload.ITEM_TYPES,
                                  key="data_items_file", max_upload_size=upload.MAX_UPLOAD_MB)
    if file is None:
        st.caption("No file yet: the statistics below are for the active dataset.")
        return
    state = _parsed(file)
    if state["error"] is not None:
        show_data_error(state["error"], "Could not read the file")
        return
    _preview(state["raw"])
    mapping = _mapping_form(state["raw"])
    options = _options_form(mapping.get("timestamp") not in (None, upload.NONE))
    name = st.text_input("Save as", key="data_name", help=upload.NAME_HELP)
    taken = bool(name.strip()) and workspace().get_dataset(name.strip()) is not None
    overwrite = st.checkbox(f"Replace the saved dataset “{md_escape(name.strip())}”", key="data_overwrite",
                            help="Runs trained on it are kept.") if taken else False
    if st.button("Load dataset", type="primary", key="data_load"):
        _load(file, items_file, mapping, options, name, overwrite)
    _show_outcome()


def _load(file, items_file, mapping, options, name, overwrite: bool) -> None:
    """Validate and save, in the engine's limited child process (the server gets the report and the record)."""
    try:
        with st.spinner("Validating and indexing..."):
            result = upload.ingest(
                workspace(), file.getvalue(), file.name, mapping=mapping,
                items=items_file.getvalue() if items_file is not None else None,
                items_filename=items_file.name if items_file is not None else None,
                options=options, name=name, overwrite=overwrite,
            )
    except RecsysError as err:
        st.session_state[_OUTCOME] = ("error", err)
        return
    st.session_state[_OUTCOME] = ("ok", result.record.name, result.report.lines())
    set_active(result.record.name)
    st.rerun()  # the sidebar, drawn before this page, must show the new dataset


def _show_outcome() -> None:
    outcome = st.session_state.get(_OUTCOME)
    if outcome is None:
        return
    if outcome[0] == "error":
        show_data_error(outcome[1], "Nothing was loaded")
        return
    _, name, lines = outcome
    st.success(f"Loaded and saved **{md_escape(name)}**; it is now the active dataset.", icon=":material/check:")
    if lines:
        st.markdown("**Validation report**")
        st.markdown("\n".join(f"- {md_escape(line)}" for line in lines))


def _stats_section() -> None:
    record = active_record()
    stats = dataset_stats(record)
    st.subheader(f"Statistics: {md_escape(record.name)}")
    cols = st.columns(4)
    cols[0].metric("Users", f"{stats['users']:,}")
    cols[1].metric("Items", f"{stats['items']:,}")
    cols[2].metric("Interactions", f"{stats['interactions']:,}")
    cols[3].metric("Sparsity", f"{stats['sparsity']:.2%}", help="Share of user-item pairs with no interaction.")
    st.caption(
        f"Per user: min {stats['per_user_min']}, median {stats['per_user_median']:g}, max {stats['per_user_max']}. "
        f"Per item: min {stats['per_item_min']}, median {stats['per_item_median']:g}, max {stats['per_item_max']}."
    )
    frames = chart_frames(record)
    left, right = st.columns(2)
    left.plotly_chart(charts.long_tail_figure(frames["users"], "user"), key="chart_users")
    right.plotly_chart(charts.long_tail_figure(frames["items"], "item"), key="chart_items")
    left, right = st.columns(2)
    if "ratings" in frames:
        left.plotly_chart(charts.ratings_figure(frames["ratings"]), key="chart_ratings")
    elif "counts" in frames:
        left.plotly_chart(charts.counts_figure(frames["counts"]), key="chart_counts")
    else:
        left.info("This dataset has no ratings or counts (implicit feedback: each row says the user chose the item).")
    if "activity" in frames:
        right.plotly_chart(charts.activity_figure(frames["activity"], frames["period"]), key="chart_activity")
    elif stats["order"] == "none":
        right.info("This dataset has no timestamps and no declared order, so nobody knows which interaction came "
                   "last: leave-one-out holds out a random interaction per user, and sequential models are not "
                   "offered. There is no activity-over-time chart.")
    else:
        right.info("This dataset has no timestamps; its file order is taken as time (declared when it was loaded). "
                   "There is no activity-over-time chart.")


def _saved_section() -> None:
    st.subheader("Saved datasets")
    ws = workspace()
    records = ws.list_datasets()
    st.dataframe(records_frame(records), hide_index=True, key="data_saved_table")
    names = [r.name for r in records]
    active = active_record().name
    if st.session_state.get("data_saved_pick") not in names:  # first visit, or the pick was deleted
        st.session_state["data_saved_pick"] = active
    pick = st.selectbox("Dataset", names, key="data_saved_pick")
    c1, c2, _ = st.columns([1, 1, 4])
    if c1.button("Make active", key="data_make_active", disabled=pick == active):
        set_active(pick)
        st.rerun()
    if c2.button("Delete...", key="data_delete", disabled=pick == DEMO_NAME,
                 help="The built-in demo cannot be deleted." if pick == DEMO_NAME else None):
        st.session_state[_CONFIRM] = pick
    pending = st.session_state.get(_CONFIRM)
    if pending and pending in names:
        st.warning(f"Delete **{md_escape(pending)}** and its files? Trained runs are kept.")
        y, n, _ = st.columns([1, 1, 4])
        if y.button("Yes, delete", type="primary", key="data_delete_confirm"):
            ws.delete_dataset(pending)
            st.session_state.pop(_CONFIRM, None)
            st.rerun()
        if n.button("Cancel", key="data_delete_cancel"):
            st.session_state.pop(_CONFIRM, None)
            st.rerun()


st.title("Data")
sidebar_dataset_selector()
_load_section()
st.divider()
_stats_section()
st.divider()
_saved_section()
