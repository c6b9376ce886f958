"""Compare: a leaderboard of runs on the active dataset and split, and where each model wins."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from recsys_core.errors import RecsysError
from recsys_core.evaluation.compare import segment_breakdown
from recsys_core.training.per_user import per_user_results
from views.ui import charts, state
from views.ui.common import load_dataset, md_escape, sidebar_dataset_selector, workspace
from views.ui.model_state import run_ending, run_label, runs_frame

st.title("Compare")
record = sidebar_dataset_selector()
runs = [r for r in workspace().list_runs(dataset=record.name) if r.metrics and r.artifact_dir]
if not runs:
    st.info("No evaluated runs on this dataset yet. Train a few models on the Train page "
            "(EASE and popularity take seconds), then come back.")
    st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

split_kind = st.selectbox("Split", sorted({r.split for r in runs}), key="compare_split",
                          help="Only runs evaluated on the same split are comparable.")
runs = [r for r in runs if r.split == split_kind]
METRICS = ["ndcg@10", "hr@10", "recall@20", "mrr@10", "ndcg@20"]
state.bind("compare_metric", "metric", METRICS[0], options=METRICS)
metric = st.selectbox("Metric", METRICS, key="compare_metric")

table = runs_frame(runs).sort_values("NDCG@10", ascending=False)
st.subheader("Leaderboard")
st.caption(f"Dataset **{md_escape(record.name)}**, split {split_kind}; full ranking over all items, "
           "the user's seen items excluded, ties ranked pessimistically.")
st.dataframe(table, hide_index=True, key="compare_table")
under = [r for r in runs if (r.metrics.get("run") or {}).get("under_trained")]
if under:
    st.warning("**Under-trained:** " + "; ".join(f"#{r.id} {md_escape(r.model)} ({run_ending(r.metrics['run'])})"
                                                 for r in under)
               + ". A limit stopped these runs while their validation was still rising, so they rank below what the "
                 "model can do; the CPU time each needs is extrapolated from its validation curve. Train them again "
                 "with a larger time budget before comparing.", icon=":material/trending_up:")

bars = pd.DataFrame({"run": [run_label(r) for r in runs], "model": [r.model for r in runs],
                     metric: [r.metrics.get(metric) for r in runs], "train s": [r.wall_s for r in runs]})
bars = bars.sort_values(metric, ascending=False)
RUN_COLOURS = charts.category_colours([run_label(r) for r in runs])  # one colour per run on every chart
fig = px.bar(bars, x="run", y=metric, color="run", color_discrete_map=RUN_COLOURS,
             hover_data={"model": True, "train s": ":.1f", metric: ":.4f"},
             title=f"{metric.upper()} by run (test split)")
fig.update_layout(xaxis_title="Run", yaxis_title=metric.upper(), height=380)
st.plotly_chart(fig, key="compare_bar")


@st.cache_data(show_spinner="Reading per-user metrics (a run recorded before they were stored is scored once)...",
               max_entries=64)
def _per_user(artifact_dir: str, dataset_version: str, split_kind: str) -> pd.DataFrame:
    """The run's per-user test metrics: the engine's use case (stored with the run, or scored once and stored);
    this cache only spares reruns the read."""
    return per_user_results(artifact_dir, load_dataset(record), split_kind)


def _frames(chosen: list, version: str) -> dict[str, pd.DataFrame]:
    """Each chosen run's per-user table by label; a run that cannot be scored is named with the reason."""
    frames = {}
    for run in chosen:
        try:
            frames[run_label(run)] = _per_user(str(run.artifact_dir), version, split_kind)
        except RecsysError as err:
            st.warning(f"{md_escape(run_label(run))} is left out of the breakdown: {md_escape(str(err))}",
                       icon=":material/warning:")
    return frames


st.subheader("Where each model wins")
best_per_model = list({r.model: r for r in sorted(runs, key=lambda r: r.metrics.get("ndcg@10", 0))}.values())
chosen = st.multiselect("Runs to break down", runs, default=best_per_model[-4:], format_func=run_label,
                        key="compare_segments_runs")
frames = _frames(chosen, f"{record.name}|{record.created_at}") if chosen else {}
if frames:
    seg_metric = metric if metric in next(iter(frames.values())).columns else "ndcg@10"
    breakdown = segment_breakdown(frames, seg_metric)
    for kind, title in (("history segment", "by history length (items before the test item)"),
                        ("target popularity", "by popularity of the held-out item")):
        part = breakdown[breakdown["kind"] == kind]
        fig = px.bar(part, x="segment", y=seg_metric, color="model", barmode="group", hover_data=["users"],
                     color_discrete_map=RUN_COLOURS, labels={"model": "run"}, title=f"{seg_metric.upper()} {title}")
        fig.update_layout(xaxis_title=kind.capitalize(), yaxis_title=seg_metric.upper(), height=360)
        st.plotly_chart(fig, key=f"compare_{kind.replace(' ', '_')}")
    st.caption("Users per segment are in the hover text; segments with few users are noisy.")
