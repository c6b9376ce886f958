"""Explain: why the active model recommends an item to a user. Shapley values over the user's history
and the item's attributes (and its words, for the text tower), a deletion check of their faithfulness,
and a global view over many users. Every number comes from `recsys_core.insight.explain`."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from recsys_core.errors import RecsysError
from recsys_core.insight import explain
from recsys_core.models.profiles import human_duration
from recsys_core.progress import Progress
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.recommend.usecases import Query
from views.ui import jobs, state
from views.ui.charts import chart_label
from views.ui.common import md_escape, plural, show_data_error
from views.ui.model_state import page_dataset_and_model, recommendations

USER_KEY, ITEM_KEY = "explain_user", "explain_item"  # plain state, also set by the Recommend page
MAX_USER_OPTIONS = 50_000  # above this many users, the user is typed rather than picked from a list
TOP_BARS = 12  # history items drawn one by one in the waterfall; the rest are summed
POSITIVE, NEGATIVE = "#2e7d32", "#c62828"


def _short(text: str, width: int = 42) -> str:
    return chart_label(text, width)  # escaped: Plotly renders <a>/<span> tags in axis ticks


# ---- page setup ----------------------------------------------------------------------------------

st.title("Explain")
record, ds, model, which = page_dataset_and_model()
st.caption(f"Dataset **{md_escape(record.name)}** · model: {md_escape(which)}.")
jobs.running_jobs_panel("explain")
explainer = explain.explainer_for(model, ds, f"{record.name}|{record.created_at}|{record.path}")  # shared with Blurbs
titles = catalogue_of(ds).labels  # one label per item, as every page, the CLI and the API show it
lengths = np.diff(ds.indptr)


def _default_user() -> int:
    """A user whose history is explained exactly (at most MAX_EXACT items) yet long enough to be interesting."""
    fits = np.flatnonzero((lengths >= 3) & (lengths <= explain.MAX_EXACT))
    return int(fits[np.argmax(lengths[fits])]) if len(fits) else 0


def _on_user() -> None:
    st.session_state[USER_KEY] = st.session_state["explain_user_select"]
    st.session_state.pop(ITEM_KEY, None)  # a new user opens on their own top recommendation


def _on_item() -> None:
    st.session_state[ITEM_KEY] = st.session_state["explain_item_select"]


state.seed_index_from_url(USER_KEY, "user", ds.user_index)  # a reload or a shared link keeps user and item
state.seed_index_from_url(ITEM_KEY, "item", ds.item_index)
if not isinstance(st.session_state.get(USER_KEY), int) or not 0 <= st.session_state[USER_KEY] < ds.n_users:
    st.session_state[USER_KEY] = _default_user()
user = st.session_state[USER_KEY]
st.session_state["explain_user_select"] = user  # mirror plain state into the widget before it is drawn
history = ds.history(user)
recs = recommendations(model, ds, Query.of(user=str(ds.user_ids[user]), k=10))  # the Recommend page's own list
options = [int(i) for i in recs["item"]]
chosen = st.session_state.get(ITEM_KEY)
if not isinstance(chosen, int) or not 0 <= chosen < ds.n_items or chosen in set(history.tolist()):
    chosen = options[0] if options else None  # stale (another dataset or user): the top recommendation
if chosen is not None and chosen not in options:
    options.insert(0, chosen)  # e.g. picked on the Recommend page under filters
if chosen is None:
    st.info("This user has seen every item: there is nothing to recommend or explain.")
    st.stop()
st.session_state[ITEM_KEY] = chosen
st.session_state["explain_item_select"] = chosen
state.write_id("user", ds.user_ids, user)
state.write_id("item", ds.item_ids, chosen)
rank_of = {int(i): r for i, r in zip(recs["item"], recs["rank"])}

cols = st.columns([2, 3])
if ds.n_users <= MAX_USER_OPTIONS:
    cols[0].selectbox("User", range(ds.n_users), format_func=lambda u: f"{ds.user_ids[u]} ({plural(int(lengths[u]), 'item')})",
                      key="explain_user_select", on_change=_on_user, help="Type to search by user id.")
else:  # a list of this many options would be slow to send to the browser
    typed = cols[0].text_input("User id", value=str(ds.user_ids[user]), key="explain_user_typed")
    picked = ds.user_index.get(typed.strip())
    if picked is None:
        st.error(f"No user {md_escape(typed)} in this dataset.")
        st.stop()
    if picked != user:
        st.session_state["explain_user_select"] = picked
        _on_user()
        st.rerun()
cols[1].selectbox("Recommended item", options, key="explain_item_select", on_change=_on_item,
                  format_func=lambda i: f"#{rank_of.get(i, '?')} {titles[i]}",
                  help="This user's top 10 from the active model (seen items excluded).")
st.page_link("views/recommend.py", label="Back to Recommend", icon=":material/recommend:")
item = chosen

# ---- history SHAP --------------------------------------------------------------------------------


def _waterfall(expl: explain.Explanation, n_history: int) -> go.Figure:
    """Empty-history score -> each top contributor -> the rest summed -> this history's score."""
    order = np.argsort(-np.abs(expl.values), kind="stable")
    top, rest = order[:TOP_BARS], order[TOP_BARS:]
    ys, xs, measures, hovers = ["Empty history"], [expl.base_value], ["absolute"], [
        f"Score with an empty history: {expl.base_value:.4f}"]
    for p in top:
        members = expl.members[p]
        ago = n_history - members[-1] - 1
        when = "older history" if expl.items[p] < 0 else ("newest" if ago == 0 else f"{ago} before the newest")
        when = when if ds.is_ordered else "order unknown"  # no timestamps: "newest" would be file order
        ys.append(f"{_short(expl.labels[p])} · {when}")
        xs.append(float(expl.values[p]))
        measures.append("relative")
        hovers.append(f"{html.escape(expl.labels[p])}<br>{when}<br>SHAP {expl.values[p]:+.4f}")
    if len(rest):
        ys.append(f"{plural(len(rest), 'other item')}")
        xs.append(float(expl.values[rest].sum()))
        measures.append("relative")
        hovers.append(f"{len(rest)} smaller contributions together: {expl.values[rest].sum():+.4f}")
    ys.append("This history")
    xs.append(expl.full_value)
    measures.append("total")
    hovers.append(f"Score with the whole history: {expl.full_value:.4f}")
    fig = go.Figure(go.Waterfall(orientation="h", y=ys, x=xs, measure=measures, hovertext=hovers,
                                 hoverinfo="text", increasing={"marker": {"color": POSITIVE}},
                                 decreasing={"marker": {"color": NEGATIVE}}))
    fig.update_layout(title="How each past interaction moves the score (SHAP)", xaxis_title="Model score",
                      yaxis_title="History item", yaxis={"autorange": "reversed"},
                      height=120 + 26 * len(ys), margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def _bars(expl: explain.Explanation, title: str, axis: str, hover_extra: list[str]) -> go.Figure:
    order = np.argsort(-expl.values, kind="stable")
    values = expl.values[order]
    fig = go.Figure(go.Bar(
        x=values, y=[_short(expl.labels[i]) for i in order], orientation="h",
        marker={"color": [POSITIVE if v > 0 else NEGATIVE for v in values]},
        hovertext=[f"{html.escape(expl.labels[i])}<br>SHAP {expl.values[i]:+.4f}<br>{hover_extra[i]}" for i in order],
        hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="SHAP value (change in model score)", yaxis_title=axis,
                      yaxis={"autorange": "reversed"}, height=120 + 28 * len(values),
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def _method(expl: explain.Explanation) -> str:
    how = ("exact Shapley values (all coalitions)" if expl.method == "exact"
           else "Shapley values estimated by antithetic permutation sampling (shap.explainers.Permutation)")
    return f"{how}; {expl.n_evals:,} model evaluations in {expl.seconds:.2f} s"


try:
    with st.spinner("Explaining..."):
        h_expl = explainer.explain_history(history, item)
        a_expl = explainer.explain_attributes(history, item)
except RecsysError as err:
    show_data_error(err, "Could not explain this recommendation")
    st.stop()

st.subheader(f"Why “{md_escape(titles[item])}”?")
st.success(md_escape(explainer.reasons(h_expl, a_expl)), icon=":material/lightbulb:")
st.plotly_chart(_waterfall(h_expl, len(history)), key="explain_waterfall")
st.caption(f"Method: {_method(h_expl)}. Green raises the score, red lowers it; the values add up from the "
           f"empty-history score ({h_expl.base_value:.4f}) to this history's ({h_expl.full_value:.4f}).")

st.subheader("Which of the item's attributes it shares with the history")
shared = [f"shared by {len(m)} of the {len(history)} history items" for m in a_expl.members]
st.plotly_chart(_bars(a_expl, "Attributes (SHAP)", "Attribute of the recommended item", shared),
                key="explain_attributes")
st.caption("Switching an attribute off removes every history item that shares it with this item; "
           "an attribute no history item shares gets exactly zero. "
           f"Method: {_method(a_expl)}.")

if model.capabilities.text:
    st.subheader("Which words of the item's text matter")
    if st.toggle("Explain the item's words", key="explain_text_toggle",
                 help="Re-encodes the item text with words blanked out; a few seconds on a CPU, then cached."):
        with st.spinner("Re-encoding the item text..."):
            t_expl = explainer.explain_text(history, item)
        st.plotly_chart(_bars(t_expl, "Words of the item text (SHAP)", "Word", [""] * len(t_expl.labels)),
                        key="explain_words")
        st.caption(f"Method: {_method(t_expl)}.")

# ---- deletion check ------------------------------------------------------------------------------

st.subheader("Deletion check: are these reasons faithful?")
k = st.slider("Items to delete (k)", 1, 5, 3, key="explain_k")
check = explainer.deletion_check(history, item, k=k, n_random=10, explanation=h_expl)
cols = st.columns(3)
cols[0].metric(f"Score now (rank {check.rank})", f"{check.score:.4f}")


def _moved(places: float, rank: str) -> dict:
    """A metric's delta for places moved up (a worse rank is a larger number, so a fall shows ↓ in red); no
    arrow and no '+0' when nothing moved."""
    if round(places, 1) == 0:
        return {"delta": f"no change (rank {rank})", "delta_color": "off", "delta_arrow": "off"}
    return {"delta": f"{places:+,.{0 if float(places).is_integer() else 1}f} places (rank {rank})"}


cols[1].metric(f"Without the top {check.k} reasons", f"{check.top_score:.4f}",
               **_moved(check.rank - check.top_rank, f"{check.top_rank:,}"))
cols[2].metric(f"Without {check.k} random items (mean of {check.n_random})", f"{check.random_score:.4f}",
               **_moved(check.rank - check.random_rank, f"{check.random_rank:,.1f}"))
verdict = ("the attributions pick items the score really depends on" if check.top_drop > check.random_drop
           else "here the attributions do no better than random items (interactions between items dominate)")
st.caption(f"Score drop {check.top_drop:+.4f} after deleting the top {check.k} attributed items vs "
           f"{check.random_drop:+.4f} after deleting random ones: {verdict}. Ranks exclude the user's seen items.")

# ---- global view ---------------------------------------------------------------------------------

st.subheader("Global view: what drives recommendations across users")
n_users = st.slider("Users (random, each with their top-1 recommendation)", 20, 200, 100, step=20,
                    key="explain_global_users")
GLOBAL_EVALS = 500  # permutation budget per user: the global view trades a little precision for speed


def _global_params(n: int) -> dict:
    """What a global view is found by, from any tab: same model, dataset version and settings."""
    return {"model": model.identity, "version": f"{record.created_at}|{record.path}", "users": n,
            "max_evals": GLOBAL_EVALS}


global_params = _global_params(n_users)


def _global_work(explainer: explain.Explainer, histories: list[np.ndarray]):
    """The job's work, bound to this run's explainer and users (it outlives the script run)."""
    def work(progress: Progress) -> dict:
        return {"frame": explainer.global_view(histories, progress=progress, max_evals=GLOBAL_EVALS)}
    return work


def _start_global() -> None:
    n = st.session_state["explain_global_users"]  # callbacks run before the script: read the slider itself
    sample = np.sort(np.random.default_rng(0).choice(ds.n_users, min(n, ds.n_users), replace=False))
    work = _global_work(explainer, [ds.history(int(u)) for u in sample])
    jobs.start("global_view", record.name, _global_params(n), work, f"Global explanation of {n} users ({which})")


def _time_hint() -> str:
    """From the last global view of this model on this machine; the running job shows its own ETA."""
    rate = jobs.seconds_per_unit("global_view", record.name, lambda p: p.get("model") == model.identity,
                                 lambda p: p.get("users", 0))
    if rate is None:
        return "the first run measures how long it takes on this machine"
    return f"about {human_duration(rate * n_users)} for {n_users} users (measured on the last run)"


job = jobs.current("global_view", record.name, global_params)
if job is not None and job.active:
    jobs.follow("global_view", record.name, global_params, "explain_global")
else:
    st.button("Compute the global view", key="explain_global_button", on_click=_start_global,
              help=f"Runs as a job of the workspace: {_time_hint()}. Any tab sees its progress and can cancel it.")
    jobs.ended_note(job)


def _beeswarm(frame: pd.DataFrame, summary: pd.DataFrame, kind: str, colour: str, top: int = 15) -> go.Figure:
    """SHAP summary plot: one row per feature (most mean |SHAP| on top), one jittered dot per user."""
    labels = summary[summary["kind"] == kind]["label"].head(top).tolist()
    part = frame[(frame["kind"] == kind) & frame["label"].isin(labels)]
    row = part["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(part))
    fig = go.Figure(go.Scatter(
        x=part["value"], y=row + jitter, mode="markers",
        marker={"color": part["feature"], "colorscale": "RdBu_r", "cmin": 0, "cmax": 1, "size": 6, "opacity": 0.7,
                "colorbar": {"title": colour}},
        hovertext=[f"{html.escape(label)}<br>SHAP {v:+.4f}<br>{colour}: {f:.2f}"
                   for label, v, f in zip(part["label"], part["value"], part["feature"])], hoverinfo="text"))
    fig.update_layout(title=f"Top {len(labels)} {'history items' if kind == 'item' else 'attributes'} by mean |SHAP|",
                      xaxis_title="SHAP value (change in model score)", yaxis_title="",
                      yaxis={"tickvals": list(range(len(labels))), "ticktext": [_short(x, 36) for x in labels],
                             "autorange": "reversed"},
                      height=140 + 30 * len(labels), margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


stored = jobs.last_result("global_view", record.name, global_params)
if stored is not None and not (job is not None and job.active):
    frame = stored["frame"]
    summary = explain.summarise_global(frame)
    st.caption(f"{frame['row'].nunique()} users explained. Each dot is one user's top-1 recommendation.")
    st.plotly_chart(_beeswarm(frame, summary, "attribute", "share of history"), key="explain_global_attributes")
    recency = "recency (1 = newest)" if ds.is_ordered else "position (file order: no timestamps)"
    st.plotly_chart(_beeswarm(frame, summary, "item", recency), key="explain_global_items")
    shown = summary.rename(columns={"mean_abs": "mean |SHAP|", "mean": "mean SHAP", "appears": "users",
                                    "top_reason": "times a top-3 reason"})
    with st.container(key="explain_global_table"):
        st.dataframe(shown, hide_index=True, key="explain_global_frame",
                     column_config={"mean |SHAP|": st.column_config.NumberColumn(format="%.4f"),
                                    "mean SHAP": st.column_config.NumberColumn(format="%.4f")})
else:
    st.caption("Explains each sampled user's top-1 recommendation (history and attribute SHAP) and aggregates: "
               f"{_time_hint()}.")
