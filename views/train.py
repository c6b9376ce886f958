"""Train: pick a model, set hyperparameters, train with live progress and cancel, or load a saved model.

Training jobs belong to the workspace, not to this tab: each runs in its own process and is recorded in
the workspace's `jobs` table, so every tab (and a reload) shows every running job of the dataset with its
progress and a Cancel button, and a job started here keeps its handle when this tab is closed.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from recsys_core.data.dataset import ORDER_TIMESTAMP
from recsys_core.data.splits import Split
from recsys_core.errors import RecsysError
from recsys_core.models.base import Refusal, capabilities_of, family_class, load_model, refusal_of
from recsys_core.models.profiles import (
    PROFILES,
    Estimate,
    Profile,
    can_estimate,
    describe_device,
    estimate_job,
    human_duration,
    human_range,
    profile_for,
)
from recsys_core.models.settings import has_training_loop
from recsys_core.threads import training_threads
from recsys_core.training.baseline import BASELINE_KIND
from recsys_core.training.experiment import check_paths, make_split, memory_estimate_mb
from recsys_core.training.jobs import TrainingJob, max_jobs, watch_queue
from recsys_core.workspace.artifacts import import_model_zip
from recsys_core.workspace.jobs import JobRecord, JobStore
from recsys_core.workspace.visible import visible_path
from views.ui import state
from views.ui.common import _root_key, load_dataset, md_escape, show_data_error, sidebar_dataset_selector, workspace
from views.ui.model_state import (
    ACTIVE_MODEL_KEY,
    cached_model,
    config_form,
    family_options,
    run_ending,
    run_label,
    runs_frame,
    unfinished_run_warning,
)
from views.ui.tune import tune_mode

JOB_KEY = "train_job"  # session state: handle (TrainingJob) of the last job this session started
WATCH_KEY = "train_watched"  # session state: {job id: started here} of jobs shown until dismissed
SEEN_KEY = "train_seen_running"  # session state: ids running at the last redraw (to notice one ending)
ACTIVATED_KEY = "train_activated"  # session state: ids of own jobs whose model was made active
ESTIMATE_KEY = "train_estimate"  # session state: the expected-time measurement of the settings shown
METRIC = "ndcg@10"
TRAINING_KINDS = ("train", BASELINE_KIND)  # jobs that train one run (a tune job has its own panel)

st.title("Train")
record = sidebar_dataset_selector()
ds = load_dataset(record)
st.caption(f"Dataset **{md_escape(record.name)}**: {ds.n_users:,} users, {ds.n_items:,} items, "
           f"{ds.n_interactions:,} interactions. Evaluation is full ranking over all items on the test split.")


@st.cache_resource(show_spinner=False)
def _job_store(root: str) -> JobStore:
    store = JobStore(workspace())  # creating it marks jobs a previous server left running as interrupted
    watch_queue(store)  # this server starts queued jobs as slots free, whoever queued them
    return store


def job_store() -> JobStore:
    return _job_store(_root_key())


def _watched() -> dict[int, bool]:
    return st.session_state.setdefault(WATCH_KEY, {})


def _start(family: str, overrides: dict, split_kind: str) -> bool:
    """Start a job, or show why the settings are refused; whether it started."""
    try:
        if (refused := refusal_of(family, overrides, ds)) is not None:
            raise refused.error()  # the button is disabled then; a stale click still gets the reason
        check_paths(family, overrides, workspace())  # the jail: checkpoints and encoders live in the workspace
        memory_estimate_mb(family, overrides, ds.n_items)  # a bad setting is refused here, before a process starts
    except RecsysError as err:
        show_data_error(err, "Check the settings")
        return False
    job = TrainingJob.start(job_store(), record.name, family, overrides, split_kind=split_kind)
    st.session_state[JOB_KEY] = job
    _watched()[job.id] = True
    return True


def _eta_text(job: JobRecord) -> str:
    """The time left at most (the steps left at the rate so far, or the time budget left when that is sooner),
    and that early stopping usually ends it sooner, for models that validate as they go."""
    if job.eta_s is None:
        return ""
    why = " (time budget)" if job.eta_bounded else ""
    sooner = "; usually less (early stopping)" if capabilities_of(job.family, job.overrides).training_curves else ""
    return f"at most {human_duration(job.eta_s)} left{why}{sooner}"


def _progress_text(job: JobRecord) -> str:
    if job.queued:
        return (f"queued: {'next' if job.queue_position == 1 else f'number {job.queue_position}'} in line; it "
                f"starts when a running job ends (at most {max_jobs()} train at once on this machine)")
    if job.status == "pending":
        return "starting: loading the libraries and the dataset in the job's own process"
    if job.cancel:
        return "cancel requested: stopping after the current step, then evaluating the best weights"
    parts = [f"epoch {job.epoch:,}"] if job.epoch else []
    if job.total:
        parts.append(f"step {job.step:,} of {job.total:,} ({job.fraction:.0%})")
    parts += [t for t in (_eta_text(job),) if t]
    if job.loss is not None:
        parts.append(f"loss {job.loss:.4f}")
    if METRIC in job.metrics:
        parts.append(f"validation NDCG@10 {job.metrics[METRIC]:.4f}")
    if not parts:
        return md_escape(job.message) if job.message else f"running for {human_duration(job.elapsed_s)}"
    return " · ".join(parts)


def _fitted(values: list[float], floor: float | None = None) -> list[float]:
    """An axis range around the data (never Plotly's empty -1..4), from `floor` when given."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.1, abs(hi) * 0.05, 1e-4)
    return [floor if floor is not None else lo - pad, hi + pad]


def _by_model(points: list[list], column: int) -> dict[int, list[list]]:
    """Curve points per model a run trains one after another (a seed ensemble's members, a blend's parts'): each
    starts again at step 0, so one line through them all would run back across the chart. Points recorded before
    the model was noted belong to the first."""
    groups: dict[int, list[list]] = {}
    for point in points:
        groups.setdefault(point[column] if len(point) > column else 1, []).append(point)
    return groups


def _named(groups: dict[int, list[list]], model: int, hover: str) -> dict:
    """A trace's name and hover text: the model's number where the run trains several."""
    several = len(groups) > 1
    return {"name": f"model {model}", "hovertemplate": (f"model {model}<br>" if several else "") + hover}


def _loss_figure(job: JobRecord) -> go.Figure:
    points = job.curve.get("loss", [])
    groups = _by_model(points, 2)
    fig = go.Figure([go.Scatter(x=[p[0] for p in ps], y=[p[1] for p in ps], mode="lines+markers" if len(ps) < 3 else "lines",
                                **_named(groups, m, "step %{x:,}<br>loss %{y:.4f}<extra></extra>"))
                     for m, ps in groups.items()])
    fig.update_layout(title="Training loss" + (" (one line per model)" if len(groups) > 1 else ""), height=280,
                      margin={"t": 40, "b": 10}, showlegend=len(groups) > 1)
    fig.update_xaxes(title_text="Optimizer step", range=[0, max(p[0] for p in points) * 1.05 + 1])  # the data, not the plan
    fig.update_yaxes(title_text="Loss", range=_fitted([p[1] for p in points]))
    return fig


def _validation_figure(job: JobRecord) -> go.Figure:
    points = [p for p in job.curve.get("val", []) if METRIC in p[1]]
    epochs, values = [p[0] for p in points], [p[1][METRIC] for p in points]
    groups = _by_model(points, 3)
    fig = go.Figure([go.Scatter(x=[p[0] for p in ps], y=[p[1][METRIC] for p in ps], mode="lines+markers",
                                customdata=[p[2] for p in ps],
                                **_named(groups, m, "epoch %{x}<br>NDCG@10 %{y:.4f}<br>after %{customdata} s<extra></extra>"))
                     for m, ps in groups.items()])
    fig.update_layout(title="Validation NDCG@10" + (" (one line per model)" if len(groups) > 1 else ""), height=280,
                      margin={"t": 40, "b": 10}, showlegend=len(groups) > 1)
    fig.update_xaxes(title_text="Epoch", range=[0.5, max(epochs) + 0.5], dtick=max(1, round(max(epochs) / 10)))
    fig.update_yaxes(title_text="NDCG@10 (validation, full ranking)", range=_fitted(values, floor=0.0))
    return fig


def _curves(job: JobRecord) -> None:
    """Live curves, only for models that have them (the training loop's loss and validation)."""
    if not capabilities_of(job.family, job.overrides).training_curves:
        return
    has_loss = bool(job.curve.get("loss"))
    has_val = any(METRIC in p[1] for p in job.curve.get("val", []))
    if not has_loss:
        st.caption("The loss curve appears after the first optimizer steps.")
        return
    left, right = st.columns(2)
    left.plotly_chart(_loss_figure(job), key=f"train_loss_{job.id}")
    if has_val:
        right.plotly_chart(_validation_figure(job), key=f"train_val_{job.id}")
    else:
        right.caption("Validation NDCG@10 appears after the first epoch.")


def _outcome(job: JobRecord, mine: bool) -> None:
    """How an ended job ended, in words; a finished run of this session becomes the active model."""
    if job.status in ("failed", "interrupted"):
        st.error(f"Training {job.status}: {md_escape(job.error)}")
        return
    if not job.result:  # cancelled while queued: no process ran, no run was recorded
        st.info(f"Job #{job.id} was cancelled before it started; nothing was trained.")
        return
    res, run = job.result, f"Run #{job.run_id}"
    ending = run_ending(res)
    scores = (f"NDCG@10 {res['metrics']['ndcg@10']:.4f}, HR@10 {res['metrics']['hr@10']:.4f} "
              f"({res['train_s']:,.1f} s, {res.get('cpu_s', 0.0):,.1f} CPU s on {res['device']}"
              f"{'; stopped: ' + ending if ending else ''})")
    _under_trained_note(res, run)
    if job.status == "cancelled":
        st.warning(f"{run} was **cancelled**; the best weights so far were kept, evaluated and saved, labelled "
                   f"'cancelled' (not made the active model): {scores}.")
    elif res.get("status") == "no_improvement":
        st.warning(f"{run} finished with **no improvement**: validation never beat its first check, so the model "
                   f"learned little it could show (labelled 'no_improvement'): {scores}.")
    else:
        st.success(f"{run} finished and was evaluated: {scores}.")
        activated = st.session_state.setdefault(ACTIVATED_KEY, set())
        if mine and job.id not in activated:
            st.session_state[ACTIVE_MODEL_KEY] = res["artifact_dir"]
            activated.add(job.id)


def _under_trained_note(res: dict, run: str) -> None:
    """A warning when a limit stopped the run while its validation was still rising."""
    if res.get("under_trained"):
        st.warning(f"{run} is **under-trained**: it stopped on a limit ({res['stop_reason']}) while validation "
                   f"NDCG@10 was still rising (its best was one of its last two validations), so its score understates "
                   f"the model. "
                   f"The curve suggests about **{human_duration(res['needs_cpu_s'])} of training CPU time** to early "
                   f"stopping ({md_escape(res['needs_method'])}): raise the time budget to compare it fairly.")


def _job_card(job: JobRecord, mine: bool) -> None:
    with st.container(border=True, key=f"train_job_card_{job.id}"):
        what = job.title if job.kind == BASELINE_KIND else family_class(job.family).description
        st.markdown(f"**Job #{job.id}: {md_escape(what)}** · "
                    f"{job.status}{' · started in this tab' if mine else ''}")
        if job.active:
            st.progress(job.fraction, text=_progress_text(job))
            st.button("Cancel", key=f"train_cancel_{job.id}", on_click=job_store().request_cancel, args=(job.id,),
                      disabled=job.cancel, type="secondary",
                      help="Stops within 2 s, from any tab; the best weights so far are kept, evaluated and "
                           "recorded as 'cancelled'.")
            _memory_caption(job)
        else:
            _outcome(job, mine)
        _curves(job)
        if not job.active:
            st.button("Dismiss", key=f"train_dismiss_{job.id}", on_click=_watched().pop, args=(job.id, None))


def _memory_caption(job: JobRecord) -> None:
    try:
        mb = memory_estimate_mb(job.family, job.overrides, ds.n_items)
    except RecsysError:
        return
    if mb:
        st.caption(f"Estimated peak training memory: {mb:,.0f} MB (batch size is halved automatically on a "
                   "GPU out-of-memory error).")


@st.fragment(run_every=1.0)
def _jobs_panel() -> None:
    """Every job of this dataset that runs, from any tab, plus ended ones this tab watched; redrawn every
    second without rerunning the page, and the whole page once a job ends (fresh 'Saved runs')."""
    store = job_store()
    active = [job for job in store.list(dataset=record.name, active_only=True, kind=None)
              if job.kind in TRAINING_KINDS]  # the automatic baseline trains like any run: it is listed too
    watched = _watched()
    for job in active:
        watched.setdefault(job.id, False)
    jobs = {job.id: job for job in active}
    for job_id in [i for i in watched if i not in jobs]:
        try:
            job = store.get(job_id)
        except RecsysError:  # the workspace was replaced under us
            watched.pop(job_id)
            continue
        if job.dataset == record.name:
            jobs[job_id] = job
    if jobs:
        st.subheader("Training jobs")
    for job in sorted(jobs.values(), key=lambda j: -j.id):
        _job_card(job, watched.get(job.id, False))
    running = {job.id for job in active}
    ended = st.session_state.get(SEEN_KEY, set()) - running
    st.session_state[SEEN_KEY] = running
    if ended:
        st.rerun()  # a job ended: redraw the page, so 'Saved runs' lists its run and the form is back


@st.cache_resource(show_spinner="Splitting the data...", max_entries=4)
def _split(root: str, name: str, version: str, kind: str, _ds) -> Split:
    return make_split(_ds, kind)  # the estimate's probe trains and validates on the run's own split


def _basic_settings(family: str) -> tuple[Profile, float | None]:
    """The quality/speed preset (the device's proposal first) and, for a model with a training loop, its
    time budget in CPU seconds."""
    proposed = profile_for()
    names = list(PROFILES)
    preset = st.radio("Quality / speed", names, index=names.index(proposed.name), key="train_preset",
                      horizontal=True, format_func=lambda n: PROFILES[n].label,
                      help=" ".join(f"{p.label}: {p.help}" for p in PROFILES.values()))
    profile = PROFILES[preset]
    st.caption(f"Training device: **{md_escape(describe_device())}**, which proposes the *{proposed.label}* "
               f"profile. {md_escape(profile.help)}")
    if not has_training_loop(family_class(family).config_class):
        return profile, None
    minutes = st.number_input("Time budget (CPU minutes)", min_value=0.0, value=profile.budget_for(family) / 60,
                              step=1.0, format="%g", key=f"train_budget_{preset}_{family}",
                              help="Training stops after the epoch that passes this much CPU time (0 = no "
                                   "limit). A job trains on one thread, so a CPU second is the same work at any load: "
                                   "a busy machine trains the same model, only slower.")
    return profile, minutes * 60


def _expected_time(family: str, overrides: dict, split_kind: str) -> None:
    """The expected time, measured on this machine in the background (a few real steps on this data)."""
    if not has_training_loop(family_class(family).config_class):
        st.caption("Expected time: one pass over the data (no epochs, so no budget).")
        return
    try:
        estimable = can_estimate(family, overrides)
    except RecsysError as err:  # a setting out of its range: the form says so before anything is measured
        st.caption(f"Expected time: unknown ({md_escape(str(err).splitlines()[0])}).")
        return
    if not estimable:
        budget = overrides.get("train.cpu_budget_s") or 0
        bound = (f"training stops after the epoch that passes {human_duration(budget)} of CPU time (the budget); "
                 "encoding the item texts, start-up and the final evaluation come on top") if budget else "no bound set"
        st.caption(f"Expected time: not measured, as this model reads item texts (timing steps would load and run "
                   f"the text encoder while you wait); {bound}.")
        return
    try:
        split = _split(_root_key(), record.name, f"{record.created_at}|{record.path}", split_kind, ds)
        job = estimate_job(ds, family, overrides, split)
    except RecsysError as err:
        st.caption(f"Expected time: unknown ({md_escape(str(err))}).")
        return
    st.session_state[ESTIMATE_KEY] = job
    if job.running:
        _estimate_pending(job)
    elif job.state == "failed":
        st.caption(f"Expected time: could not be measured ({md_escape(job.error)}).")
    else:
        _estimate_caption(job.result)


@st.fragment(run_every=1.0)
def _estimate_pending(job) -> None:
    if job.running:
        st.caption("Expected time: timing a few training steps on this machine...")
    else:
        st.rerun()  # measured: redraw the page with it


def _estimate_caption(estimate: Estimate) -> None:
    if estimate.parts:
        _parts_caption(estimate)
        return
    step = f"{estimate.step_cpu_s * 1000:,.0f} ms" if estimate.step_cpu_s < 1 else f"{estimate.step_cpu_s:.1f} s"
    bound = {"cpu_budget": "the time budget", "max_steps": "the step cap", "epochs": "the epochs"}[estimate.bound]
    earliest = "early stopping at its earliest" if estimate.early_stopping else bound
    refit = (f", then the refit on training + validation items (up to {estimate.refit_steps:,} more steps)"
             if estimate.refit_steps else "")
    span = f"from {earliest} to {bound}"
    span = (f"{estimate.members} members train one after another, each on an equal share of any time budget. "
            f"Each: {span}") if estimate.members > 1 else "F" + span[1:]
    st.markdown(f"**Expected time: {estimate.text()}**")
    st.caption(f"{span}: at most {estimate.planned_steps:,} steps of {step} CPU time each "
               f"({estimate.steps_per_epoch:,} an epoch){refit}, with validation, start-up and the final evaluation; "
               f"measured on this machine now, on {estimate.threads} thread(s). The minutes assume the load stays as "
               f"measured ({estimate.measured_load:.1f}); the CPU time does not depend on it.")
    if estimate.threads != training_threads():
        st.caption(f"The job trains on {training_threads()} threads (RECSYS_TRAINING_THREADS), the measurement ran on "
                   f"{estimate.threads}: its CPU time per step may differ from this estimate.")


def _parts_caption(estimate: Estimate) -> None:
    """A blend's expected time: its parts' own, added up (each measured as a run of that part would be)."""
    each = "; ".join(f"part {i} ({family}, {part.members} member{'s' * (part.members > 1)}): "
                     f"{human_range(part.lower_cpu_s, part.upper_cpu_s)}" for i, (family, part) in
                     enumerate(estimate.parts, 1))
    st.markdown(f"**Expected time: {estimate.text()}**")
    st.caption(f"The parts train one after another, each on its members' share of any time budget, and their CPU "
               f"times add up: {each} of CPU time, from early stopping at its earliest to the latest stop. Measured on "
               f"this machine now, a few real steps of each part, on {estimate.threads} thread(s); the minutes assume "
               f"the load stays as measured ({estimate.measured_load:.1f}).")


def _refusal(family: str, overrides: dict | None = None) -> Refusal | None:
    """Why `family` with `overrides` cannot train on this dataset, or None (a setting out of its range is not a
    refusal of the data: the settings check reports it)."""
    try:
        return refusal_of(family, overrides, ds)
    except RecsysError:
        return None


def _family_picker() -> str:
    """The model family, kept in the URL (`?model=`); families this data refuses with their defaults are marked,
    and the first one offered is the default."""
    families = family_options()
    refused = [f for f in families if _refusal(f) is not None]
    offered = [f for f in families if f not in refused]
    state.bind("train_family", "model", offered[0] if offered else families[0], options=families)
    family = st.selectbox("Model", families, key="train_family",
                          format_func=lambda f: family_class(f).description + (" (not offered on this data)"
                                                                               if f in refused else ""))
    if refused:
        names = ", ".join(family_class(f).description.split(":")[0] for f in refused)
        st.caption(f"Not offered on this data with their defaults: {md_escape(names)}. Pick one to see why and "
                   "what would make it run.")
    return family


def _split_picker() -> str:
    """Leave-one-out always; the temporal split only on data with real timestamps."""
    kinds = ["leave_one_out", "temporal"] if ds.order == ORDER_TIMESTAMP else ["leave_one_out"]
    if st.session_state.get("train_split") not in kinds:
        st.session_state.pop("train_split", None)  # e.g. "temporal" chosen on another dataset
    kind = st.selectbox("Split", kinds, key="train_split",
                        help="Leave-one-out: each user's last item is test, second-to-last validation. Temporal: "
                             "a global time cut.")
    if len(kinds) == 1:
        st.caption("Temporal split: not offered, this data has no timestamps (add a timestamp column to use it).")
    return kind


def _form(active: list[JobRecord]) -> None:
    started = sum(not job.queued for job in active)
    share = "it waits in the queue until a slot frees" if started >= max_jobs() else "it shares the CPU with them"
    box = st.expander(f"Start another training job ({started} running, {len(active) - started} queued in this "
                      f"workspace; {share})") if active else st.container()
    with box:
        family = _family_picker()
        profile, budget_s = _basic_settings(family)
        with st.expander("Advanced settings"):
            split_kind = _split_picker()
            overrides = config_form(family, f"train_cfg_{profile.name}", base=profile.overrides(family),
                                    skip={"train.cpu_budget_s"})
        if budget_s is not None:
            overrides["train.cpu_budget_s"] = float(budget_s)
        refused = _refusal(family, overrides)
        if refused is None:
            _expected_time(family, overrides, split_kind)
        else:
            st.error(f"**Not offered on this data:** {md_escape(refused.reason)}.\n\n"
                     f"**What to do:** {md_escape(refused.fix)}.", icon=":material/block:")
        submitted = st.button("Start training", type="primary", key="train_start", disabled=refused is not None,
                              help=None if refused is None else "This model cannot run on this data; see why above.")
    if submitted and _start(family, overrides, split_kind):
        st.rerun()


TUNE_MODE = "Find the best settings"
if st.radio("Mode", ["Train a model", TUNE_MODE], horizontal=True, key="train_mode") == TUNE_MODE:
    tune_mode(record, ds, job_store())  # views/ui/tune.py: a search within a CPU budget, as a workspace job
else:
    _form([job for job in job_store().list(active_only=True, kind=None) if job.runner == "process"])
_jobs_panel()

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
            unfinished_run_warning(pick)
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
            st.success(f"Loaded a {model.family} model from {md_escape(visible_path(ws, folder))}.")
        except RecsysError as err:
            show_data_error(err, "Could not load this model")
    upload = st.file_uploader("Or upload a zipped model folder", type=["zip"], key="train_model_zip")
    if upload is not None and st.button("Import zip", key="train_import_zip"):
        try:
            # A model that does not fit this dataset is refused and removed, not kept.
            dest, model = import_model_zip(upload.getvalue(), ws.models_dir(), filename=upload.name,
                                           accept=lambda m: m.check_fits(ds))
            st.session_state[ACTIVE_MODEL_KEY] = str(dest)
            st.success(f"Imported a {model.family} model into {md_escape(visible_path(ws, dest))}.")
        except RecsysError as err:
            show_data_error(err, "Could not import this model")
