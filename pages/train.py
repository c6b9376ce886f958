"""Train: pick a model, set hyperparameters, train with live progress and cancel, or load a saved model."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages.ui.common import load_dataset, md_escape, show_data_error, sidebar_dataset_selector, workspace
from pages.ui.model_state import (
    ACTIVE_MODEL_KEY,
    cached_model,
    config_form,
    family_options,
    run_label,
    runs_frame,
)
from recsys_core.errors import RecsysError
from recsys_core.models.base import family_class, load_model
from recsys_core.training.experiment import check_paths, memory_estimate_mb
from recsys_core.training.jobs import TrainingJob
from recsys_core.workspace.artifacts import import_model_zip

JOB_KEY = "train_job"  # session state: the TrainingJob of this session (one at a time)
ESTIMATE_KEY = "train_memory_mb"  # session state: estimated peak memory of the running job

st.title("Train")
record = sidebar_dataset_selector()
ds = load_dataset(record)
st.caption(f"Dataset **{md_escape(record.name)}**: {ds.n_users:,} users, {ds.n_items:,} items, "
           f"{ds.n_interactions:,} interactions. Evaluation is full ranking over all items on the test split.")


def _start(family: str, overrides: dict, split_kind: str) -> None:
    try:
        check_paths(family, overrides, workspace())  # the jail: checkpoints and encoders live in the workspace
        mb = memory_estimate_mb(family, overrides, ds.n_items)
    except RecsysError as err:
        show_data_error(err, "Check the settings")
        return
    st.session_state[ESTIMATE_KEY] = mb
    job = TrainingJob(ds, family, overrides, workspace=workspace(), dataset_name=record.name, split_kind=split_kind)
    st.session_state[JOB_KEY] = job.start()


def _curves(events) -> tuple[go.Figure, go.Figure]:
    loss = [(e.step, e.loss) for e in events if e.loss is not None]
    val = [(e.epoch, e.metrics["ndcg@10"], e.elapsed_s) for e in events if "ndcg@10" in e.metrics]
    fig_loss = go.Figure(go.Scatter(x=[s for s, _ in loss], y=[v for _, v in loss], mode="lines",
                                    hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"))
    fig_loss.update_layout(title="Training loss", height=300, margin={"t": 40, "b": 10})
    fig_loss.update_xaxes(title_text="Step")
    fig_loss.update_yaxes(title_text="Loss")
    fig_val = go.Figure(go.Scatter(x=[e for e, _, _ in val], y=[v for _, v, _ in val], mode="lines+markers",
                                   customdata=[round(t, 1) for _, _, t in val],
                                   hovertemplate="epoch %{x}<br>NDCG@10 %{y:.4f}<br>%{customdata}s<extra></extra>"))
    fig_val.update_layout(title="Validation NDCG@10", height=300, margin={"t": 40, "b": 10})
    fig_val.update_xaxes(title_text="Epoch")
    fig_val.update_yaxes(title_text="NDCG@10 (validation, full ranking)")
    return fig_loss, fig_val


@st.fragment(run_every=1.0)
def _job_panel() -> None:
    """Redrawn every second while a job exists; the rest of the page is not rerun."""
    job: TrainingJob | None = st.session_state.get(JOB_KEY)
    if job is None:
        return
    events = job.progress.snapshot()
    last = events[-1] if events else None
    eta = f", about {last.eta_s:,.0f} s left" if last and last.eta_s is not None and job.running else ""
    text = f"{job.family}: {job.state}" + (f" · {md_escape(last.message)}" if last and last.message else "") + eta
    st.progress(last.fraction if last else 0.0, text=text)
    mb = st.session_state.get(ESTIMATE_KEY)
    if mb:
        st.caption(f"Estimated peak training memory: {mb:,.0f} MB (batch size is halved automatically on a "
                   "GPU out-of-memory error).")
    if job.running:
        st.button("Cancel training", key="train_cancel", on_click=job.cancel, type="secondary",
                  help="Stops within a few seconds; the best weights so far are kept and evaluated.")
    if events:
        fig_loss, fig_val = _curves(events)
        left, right = st.columns(2)
        left.plotly_chart(fig_loss, key="train_loss_chart")
        right.plotly_chart(fig_val, key="train_val_chart")
    if job.state == "failed":
        st.error(f"Training failed: {md_escape(job.error)}")
    elif job.result is not None:
        res = job.result
        verb = "was cancelled; the best weights so far were kept and" if res.status == "cancelled" else "finished and"
        st.success(f"Run #{res.run_id} {verb} evaluated in {res.train_s:,.1f} s on {res.device}: "
                   f"NDCG@10 {res.metrics['ndcg@10']:.4f}, HR@10 {res.metrics['hr@10']:.4f}.")
        st.session_state[ACTIVE_MODEL_KEY] = res.artifact_dir
        if st.button("Train another model", key="train_clear"):
            del st.session_state[JOB_KEY]
            st.rerun()


job = st.session_state.get(JOB_KEY)
if job is None or not job.running:
    with st.form("train_form"):
        family = st.selectbox("Model", family_options(), key="train_family",
                              format_func=lambda f: family_class(f).description)
        split_kind = st.selectbox("Split", ["leave_one_out", "temporal"], key="train_split",
                                  help="Leave-one-out: each user's last item is test, second-to-last validation. "
                                       "Temporal: a global time cut.")
        with st.expander("Hyperparameters (defaults work on MovieLens-sized data)"):
            overrides = config_form(family, "train_cfg")
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        _start(family, overrides, split_kind)
        if JOB_KEY in st.session_state:
            st.rerun()
_job_panel()

st.divider()
st.subheader("Saved runs")
ws = workspace()
runs = ws.list_runs(dataset=record.name)
if runs:
    st.dataframe(runs_frame(runs), hide_index=True, key="train_runs_table")
    finished = [r for r in runs if r.artifact_dir]
    pick = st.selectbox("Use a saved model", finished, format_func=run_label, key="train_pick_run")
    if pick is not None and st.button("Use this model", key="train_use_run"):
        try:
            cached_model(pick.artifact_dir)
            st.session_state[ACTIVE_MODEL_KEY] = pick.artifact_dir
            st.success(f"Run #{pick.id} ({pick.model}) is now the active model.")
        except RecsysError as err:
            show_data_error(err, "Could not load this model")
else:
    st.info("No runs on this dataset yet: train one above (EASE takes seconds on the demo data).")

with st.expander("Load a model from a folder or a zip"):
    path = st.text_input("Model folder path", key="train_model_path",
                         help="A folder inside the workspace saved by RecSys Explorer (config.json + "
                              "model.safetensors + item_ids.json); relative paths start at the workspace folder, "
                              "e.g. models/run-00001-ease.")
    if path and st.button("Load folder", key="train_load_path"):
        try:
            folder = str(ws.resolve_inside(path, "model folder"))  # the jail: no folder outside the workspace
            model = load_model(folder)
            model.check_fits(ds)
            st.session_state[ACTIVE_MODEL_KEY] = folder
            st.success(f"Loaded a {model.family} model from {md_escape(path)}.")
        except RecsysError as err:
            show_data_error(err, "Could not load this model")
    upload = st.file_uploader("Or upload a zipped model folder", type=["zip"], key="train_model_zip")
    if upload is not None and st.button("Import zip", key="train_import_zip"):
        try:
            dest, model = import_model_zip(upload.getvalue(), ws.models_dir(), filename=upload.name)
            model.check_fits(ds)
            st.session_state[ACTIVE_MODEL_KEY] = str(dest)
            st.success(f"Imported a {model.family} model into {md_escape(dest)}.")
        except RecsysError as err:
            show_data_error(err, "Could not import this model")
