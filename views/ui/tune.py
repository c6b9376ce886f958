"""The Train page's "Find the best settings" mode: a search over a model family's declared settings within a CPU
budget (`recsys_core.training.tune`), run as a workspace job of kind `tune` in its own process.

The study lives in the workspace, so any tab (and a reload, or a restarted server) shows its trials table, the
best-so-far curve and the parameter importances, resumes it with more budget, and cancels the running search.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from recsys_core.data.dataset import Dataset
from recsys_core.errors import RecsysError
from recsys_core.models.base import capabilities_of, family_class, refusal_of
from recsys_core.training.experiment import STOP_REASONS, families
from recsys_core.training.jobs import TrainingJob
from recsys_core.training.tune import (
    MEMBERS,
    TUNE_KIND,
    default_budget_s,
    describe_space,
    job_params,
    read_study,
    space_of,
    studies_path,
    study_name,
    tunable_families,
)
from recsys_core.workspace.jobs import JobRecord, JobStore
from recsys_core.workspace.registry import DatasetRecord
from views.ui.common import md_escape, show_data_error, workspace

METRIC_WORDS = "validation NDCG@10"
SEEN_KEY = "tune_seen_active"  # session state: ids of searches running at the last redraw (to notice one ending)


def tune_mode(record: DatasetRecord, ds: Dataset, store: JobStore) -> None:
    """The whole mode: pick a family and a budget, start or resume its study, follow it."""
    st.caption("Searches a model's settings on the **validation split only** (Optuna: TPE sampling, Hyperband "
               "stops weak trials early), inside a budget of CPU time; then trains the winner once per seed "
               "(0, 1, 2) and tests it. The defaults compete as the first trial and stay the winner unless another "
               "trial beats them beyond the validation's noise. The study is kept in the workspace: come back later "
               "to see it, or resume it with more budget.")
    offered = [f for f in tunable_families(families()) if refusal_of(f, {}, ds) is None]
    if not offered:
        st.info("No model with settings to search can train on this data.")
        return
    family = st.selectbox("Model", offered, key="tune_family", format_func=lambda f: family_class(f).description)
    if capabilities_of(family, {}).transition_prior:
        st.caption("The trials score this model without its transition prior, whose table counts the validation "
                   "items they are scored on; the winner's final runs add it, weighed on validation.")
    name = study_name(record.name, family)
    study = read_study(studies_path(workspace().root), name)
    running = [j for j in store.list(dataset=record.name, kind=TUNE_KIND, active_only=True) if j.family == family]
    _start_form(record, ds, store, family, study, busy=bool(running))
    _follow(store, record.name, family, name)


def _start_form(record: DatasetRecord, ds: Dataset, store: JobStore, family: str, study: dict, busy: bool) -> None:
    proposed = round(default_budget_s(ds) / 60, 1)
    minutes = st.number_input("Budget (CPU minutes)", min_value=0.1, max_value=600.0, value=proposed, step=0.5,
                              key="tune_budget_min",
                              help=f"CPU time the search may spend (on one thread, so a busy machine searches the "
                                   f"same, only slower). Proposed for this data's size: {proposed:g} (15 on the "
                                   f"demo). The winner's final training per seed comes on top.")
    with st.expander("Search space and limits"):
        rows = [{"setting": k, "searched over": _range_words(v)} for k, v in describe_space(space_of(family)).items()]
        # tall enough for every setting: a scrolled table hid the last ones (batch_order, the masking)
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="tune_space_table", height=35 * (len(rows) + 1) + 3)
        max_trials = st.number_input("Most trials (0 = until the budget is spent)", min_value=0, value=0, step=1,
                                     key="tune_max_trials")
        members = _members_input(family)
    done = len(study.get("trials", []))
    label = f"Resume the search ({done} trials so far)" if done else "Find the best settings"
    if st.button(label, type="primary", key="tune_start", disabled=busy,
                 help="A search of this model on this data is running; cancel it or wait." if busy else None):
        try:
            params = job_params(minutes * 60, {MEMBERS: members} if members > 1 else None,
                                max_trials=int(max_trials) or None)
            TrainingJob.start(store, record.name, family, kind=TUNE_KIND, params=params)
        except RecsysError as err:
            show_data_error(err, "Could not start the search")
            return
        st.rerun()


def _members_input(family: str) -> int:
    """How many copies of the winner its final runs train (`members`), for the families that have the setting."""
    if not capabilities_of(family, {}).seed_ensemble:  # a search starts from the defaults
        return 1
    return int(st.number_input(
        "Members of the winner", min_value=1, max_value=5, value=1, step=1, key="tune_members",
        help="The winner's final runs train this many copies from their own seeds and average their scores, each on "
             "one trial's CPU budget (so N times its CPU time). The trials search single models."))


def _range_words(dim: dict) -> str:
    if "choices" in dim:
        return "one of " + ", ".join(str(c) for c in dim["choices"])
    return f"{dim['low']:g} to {dim['high']:g}" + (" (log scale)" if dim.get("log") else "")


@st.fragment(run_every=2.0)  # reading a study costs ~0.06 CPU s (SQLAlchemy): every 2 s, not every second
def _follow(store: JobStore, dataset: str, family: str, name: str) -> None:
    """The newest search of this family: its progress and Cancel, then the study's trials and charts."""
    jobs = [j for j in store.list(dataset=dataset, kind=TUNE_KIND, limit=20) if j.family == family]
    active = {j.id for j in jobs if j.active}
    ended = st.session_state.get(SEEN_KEY, set()) - active
    st.session_state[SEEN_KEY] = active
    if ended:
        st.rerun()  # a search ended: redraw the page, so the form offers to resume and Saved runs lists the winner
    if jobs:
        _job_card(store, jobs[0])
    study = read_study(studies_path(workspace().root), name)
    if not study or not study["trials"]:
        st.info("No search of this model on this data yet.")
        return
    _study_view(study)


def _job_card(store: JobStore, job: JobRecord) -> None:
    budget = job.params.get("budget_cpu_s", 0.0)
    if job.active:
        st.progress(job.fraction, text=f"Search #{job.id}: {md_escape(job.message) or 'starting'}")
        if job.cancel:
            st.caption("Cancel requested: stopping the running trial.")
        elif st.button("Cancel the search", key=f"tune_cancel_{job.id}"):
            store.request_cancel(job.id)
        return
    final = job.result.get("final", {})
    if job.status == "finished" and final:
        ndcg, runs = final["ndcg@10"], [f"#{i}" for i in job.result.get("run_ids", [])]
        seeds = ", ".join(str(s) for s in ndcg["seeds"])
        winner = "the defaults (no trial beat them beyond the validation's noise)" \
            if job.result.get("best", {}).get("defaults") else "the best settings"
        spread = f" ± {ndcg['std']:.4f}" if len(ndcg["seeds"]) > 1 else ""
        st.success(f"Search #{job.id} finished ({budget / 60:g} CPU minutes): {winner} score test NDCG@10 "
                   f"**{ndcg['mean']:.4f}{spread}** over seed{'s' if len(ndcg['seeds']) > 1 else ''} "
                   f"{seeds}, recorded as run{'s' if len(runs) > 1 else ''} {', '.join(runs)} (see Saved runs and "
                   "Compare).")
    elif job.status == "finished":
        st.info(f"Search #{job.id} finished without a finished trial to retrain.")
    else:
        st.warning(f"Search #{job.id} {job.status}{': ' + md_escape(job.error) if job.error else ''}. The trials so "
                   "far are kept; resume to go on.")


def _study_view(study: dict) -> None:
    best = study["best"]
    if best:
        st.markdown(f"**Winner so far:** trial {best['number']}{' (the defaults)' if best.get('defaults') else ''}, "
                    f"{METRIC_WORDS} {best['value']:.4f}, with "
                    + ", ".join(f"`{_code(k)}` = {md_escape(_short(v))}" for k, v in best["params"].items()))
        if best.get("vs_defaults"):
            st.caption(versus_words(best))
        if best.get("under_trained"):
            st.caption("The winner was still improving when its trial's CPU ran out: more budget per trial "
                       "(or a longer final training) would likely pay.")
    if study.get("queued_leader"):
        lead = study["queued_leader"]
        st.info(f"Trial {lead['trial']} was ahead of every finished trial ({METRIC_WORDS} {lead['value']:.4f} after "
                f"{lead['cpu_s']:.0f} CPU s) when the budget ran out: it runs again, in full, first when you resume "
                "the search.", icon=":material/schedule:")
    trials = study["trials"]
    st.dataframe(trials_frame(trials), hide_index=True, key="tune_trials_table")
    st.plotly_chart(history_figure(trials, best), key="tune_history_chart")
    if study["importances"]:
        st.plotly_chart(importance_figure(study["importances"]), key="tune_importance_chart")
    else:
        st.caption("Parameter importances appear once two finished trials differ.")


def versus_words(best: dict) -> str:
    """What the comparison with the defaults measured, in words (`tune._best`)."""
    v = best["vs_defaults"]
    noise = (f"{v['gain']:+.4f} ± {v['two_se']:.4f} (two standard errors of the per-user difference over "
             f"{v['users']:,} validation users)")
    if best.get("defaults"):
        return (f"Trial {v['trial']} scored higher on validation, but its gain over the defaults, {noise}, is within "
                "the validation's noise: the best of many noisy trials is partly luck, so the defaults are kept.")
    return f"Its gain over the defaults' trial on validation: {noise}, beyond the noise."


def _code(text: str) -> str:
    """A setting's name inside a Markdown code span (where escapes would show): no backticks in it."""
    return text.replace("`", "'")


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_frame(trials: list[dict]) -> pd.DataFrame:
    """One row per trial, one column per searched setting."""
    rows = [{"trial": t["number"], "state": t["state"], METRIC_WORDS: t["value"], "best so far": t["best_so_far"],
             "CPU s": t["cpu_s"], "how it ended": STOP_REASONS.get(t["stopped"], t["stopped"]), **{k: _short(v) for k, v in t["params"].items()}}
            for t in trials]
    return pd.DataFrame(rows)


def history_figure(trials: list[dict], best: dict | None = None) -> go.Figure:
    """Each finished trial's validation NDCG@10 (hover: its settings), the best so far, and the winner (the highest
    trial, or the defaults' when no trial beat them beyond the noise)."""
    done = [t for t in trials if t["value"] is not None]
    hover = ["<br>".join(html.escape(f"{k} = {_short(v)}") for k, v in t["params"].items()) for t in done]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[t["number"] for t in done], y=[t["value"] for t in done], mode="markers",
                             name="trial", customdata=hover,
                             hovertemplate="trial %{x}: NDCG@10 %{y:.4f}<br>%{customdata}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[t["number"] for t in trials if t["best_so_far"] is not None],
                             y=[t["best_so_far"] for t in trials if t["best_so_far"] is not None], mode="lines",
                             name="best so far", line={"shape": "hv"},
                             hovertemplate="after trial %{x}: best %{y:.4f}<extra></extra>"))
    if best:
        why = "the defaults, kept" if best.get("defaults") and best.get("vs_defaults") else "the highest"
        fig.add_trace(go.Scatter(x=[best["number"]], y=[best["value"]], mode="markers", name="winner",
                                 marker={"symbol": "star", "size": 14}, customdata=[why],
                                 hovertemplate="winner: trial %{x} (%{customdata}), NDCG@10 %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Optimisation history", xaxis_title="trial", yaxis_title=METRIC_WORDS, height=340,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def importance_figure(importances: dict[str, float]) -> go.Figure:
    """How much of the value's variance each setting explains (fANOVA over the finished trials)."""
    names = sorted(importances, key=importances.get)
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=[html.escape(n) for n in names], orientation="h",
                           hovertemplate="%{y}: %{x:.1%} of the variance<extra></extra>"))
    fig.update_layout(title="Parameter importances", xaxis_title="share of the validation NDCG@10 variance",
                      yaxis_title="setting", xaxis_tickformat=".0%", height=150 + 28 * len(names),
                      margin={"l": 10, "r": 10, "t": 40, "b": 50})
    return fig
