"""UI helpers for trained models: cached loading, the active model, hyperparameter forms, run labels.

Models are loaded once per artifact folder (`st.cache_resource`); the active model of a session is
the run id (or uploaded folder) stored in `st.session_state`.
"""

from __future__ import annotations

import json
import os
import shlex
import typing
from pathlib import Path

import pandas as pd
import streamlit as st

from recsys_core.errors import RecsysError
from recsys_core.models.base import Recommender, family_class, load_model
from recsys_core.models.profiles import human_duration
from recsys_core.models.settings import flatten_config, help_of
from recsys_core.recommend.catalogue import best_run, catalogue_of
from recsys_core.recommend.usecases import Query, recommend_for
from recsys_core.training.baseline import BASELINE_KIND, baseline_name, ensure_baseline
from recsys_core.training.experiment import STOP_REASONS, config_fields, families
from views.ui import jobs, state
from views.ui.common import md_escape

ACTIVE_MODEL_KEY = "active_model_dir"  # artifact folder of the model the Recommend/Explain pages use

_ORDER = ["bert4rec", "sasrec", "hybrid", "text_tower", "ease", "itemknn", "popularity"]


def family_options() -> list[str]:
    known = families()
    return [f for f in _ORDER if f in known] + [f for f in known if f not in _ORDER]


@st.cache_resource(show_spinner="Loading model...", max_entries=6)
def cached_model(artifact_dir: str) -> Recommender:
    """A saved model, loaded once per folder and shared by every session."""
    return load_model(artifact_dir)


def recommendations(model: Recommender, ds, query: Query) -> pd.DataFrame:
    """The page's top-K for `query`: the engine's use case, as `recsys recommend` and `recsys serve` answer it,
    reused across reruns by (model identity, dataset version, query)."""
    return recommend_for(model, ds, query, cached=True).frame(catalogue_of(ds))


API_URL_ENV = "RECSYS_API_URL"  # where a running `recsys serve` answers, as its users reach it
DEFAULT_API_URL = "http://127.0.0.1:8000"


def curl_command(query: Query, url: str | None = None, with_key: bool = False) -> str:
    """The `curl` that asks the HTTP API for `query`'s list. The key is read from the caller's own environment
    (`$RECSYS_API_KEY`), never written out: the page does not know it and must not show it."""
    auth = ' -H "Authorization: Bearer $RECSYS_API_KEY"' if with_key else ""
    body = shlex.quote(json.dumps(query.as_request(), separators=(",", ":")))
    return (f"curl -s -X POST {shlex.quote((url or DEFAULT_API_URL).rstrip('/') + '/v1/recommend')}"
            f" -H 'Content-Type: application/json'{auth} -d {body}")


def code_panel(dataset: str, query: Query) -> None:
    """"Use this from code": the exact `curl` for what the page shows, and the API docs when a server runs."""
    url = os.environ.get(API_URL_ENV, "").strip()
    with st.container(key="rec_code"), st.expander("Use this from code", icon=":material/terminal:"):
        st.code(curl_command(query, url or None, with_key=bool(os.environ.get("RECSYS_API_KEY"))), language="bash")
        if url.startswith(("http://", "https://")):
            st.markdown(f"API docs (OpenAPI): [{md_escape(url.rstrip('/'))}/docs]({url.rstrip('/')}/docs)")
        else:
            st.caption(f"Start a server on this dataset first: `recsys serve --dataset {md_escape(dataset)}` "
                       f"(answers on {DEFAULT_API_URL}; set {API_URL_ENV} to show its docs link here).")


def config_form(family: str, key_prefix: str, base: dict[str, typing.Any] | None = None,
                skip: typing.Collection[str] = ()) -> dict[str, typing.Any]:
    """Widgets for every hyperparameter of `family` (the model's, then the training loop's) but those in `skip`,
    pre-filled from `base` (flat names) over the defaults, each with its help; returns the values that differ
    from the defaults, by flat name (`hidden`, `train.lr`)."""
    fields = [f for f in config_fields(family) if f[0] not in skip]
    defaults = flatten_config(family_class(family).config_class())
    start = {**defaults, **(base or {})}
    changed = {}
    for title, group in (("Model", [f for f in fields if "." not in f[0]]),
                         ("Training", [f for f in fields if "." in f[0]])):
        if not group:
            continue
        st.markdown(f"**{title}**")
        cols = st.columns(3)
        for i, (name, field) in enumerate(group):
            key = f"{key_prefix}_{family}_{name.replace('.', '_')}"
            with cols[i % 3]:
                value = _widget(name.rsplit(".", 1)[-1], start[name], key, help_of(field) or None,
                                (field.metadata.get("rules") or {}).get("choices"))
            if value != defaults[name]:
                changed[name] = value
    return changed


def _widget(name: str, default: typing.Any, key: str, help_: str | None,
            choices: typing.Sequence[str] | None = None) -> typing.Any:
    label = name.replace("_", " ")
    if choices:  # a pick from the declared values: nothing to mistype
        return st.selectbox(label, list(choices), index=list(choices).index(default) if default in choices else 0,
                            key=key, help=help_)
    if isinstance(default, bool):
        return st.checkbox(label, value=default, key=key, help=help_)
    if isinstance(default, int):
        return int(st.number_input(label, value=default, step=1, key=key, help=help_))
    if isinstance(default, float):
        return float(st.number_input(label, value=default, format="%g", key=key, help=help_))
    if isinstance(default, str) or default is None:
        text = st.text_input(label, value="" if default is None else default, key=key, help=help_)
        return None if default is None and text == "" else text
    return default  # tuples/lists are not edited in the form; the CLI's --set can change them


def runs_frame(runs: list) -> pd.DataFrame:
    """Runs as a leaderboard table: one row per run, the headline metrics as columns, and how it ended."""
    rows = []
    for r in runs:
        m = r.metrics or {}
        rows.append({
            "run": r.id, "model": r.model, "status": r.status, "split": r.split,
            "NDCG@10": m.get("ndcg@10"), "HR@10": m.get("hr@10"), "Recall@20": m.get("recall@20"),
            "MRR@10": m.get("mrr@10"), "coverage@10": m.get("coverage@10"), "pop. bias@10": m.get("pop_bias@10"),
            "how it stopped": run_ending(m.get("run") or {}),
            "train s": round(r.wall_s or 0.0, 1), "device": r.device, "created (UTC)": r.created_at[:19],
        })
    return pd.DataFrame(rows)


def run_ending(record: dict) -> str:
    """How a run's training ended, from its record: 'CPU budget after 1,152 steps · under-trained (needs about
    9 min CPU)'; '' for a model trained in one pass."""
    reason = record.get("stop_reason")
    if not reason:
        return ""
    steps = record.get("steps")
    text = f"{reason} after {steps:,} steps" if steps else reason
    members = record.get("members")
    if members:  # the record's own stop and steps are the first member's: name each member's
        stops = "; ".join(f"{STOP_REASONS.get(m['stopped'], m['stopped'])} after {m['steps']:,} steps"
                          for m in members["each"])
        cut = f" of {members['requested']} asked (cancelled)" if members["trained"] < members["requested"] else ""
        text = f"mean of {members['trained']}{cut} members: {stops}"  # ends in words: cards wrap it in brackets
    if record.get("under_trained"):
        text += f" · under-trained (needs about {human_duration(record['needs_cpu_s'])} CPU)"
    refit = record.get("refit")
    if refit:
        text += (f" · refit on training + validation items: {refit['steps']:,} steps" if refit.get("done")
                 else f" · not refit: {refit['reason']}")
    prior = record.get("transitions")
    if prior:
        text += (f" · transitions added at weight {prior['weight']:g}, chosen on validation" if prior["weight"]
                 else f" · transitions not added: {prior.get('reason') or 'none of their weights beat the model alone'}")
    return text


def run_label(run) -> str:
    ndcg = (run.metrics or {}).get("ndcg@10")
    score = f" · NDCG@10 {ndcg:.4f}" if isinstance(ndcg, (int, float)) else ""
    return f"#{run.id} {run.model}{score} ({run.status})"


@st.cache_resource(show_spinner=False, max_entries=4)
def _popularity(root: str, dataset_name: str, version: str, _ds) -> Recommender:
    """The popularity ranking of a dataset version, counted in this server (milliseconds): what the model pages
    serve while the automatic baseline trains as a job."""
    return family_class("popularity")().fit(_ds)


BASELINE_FOLLOW_KEY = "baseline"  # the job card of the automatic baseline (views/ui/jobs.follow)


def active_model(record, ds) -> tuple[Recommender, str]:
    """The model the Recommend/Explain/Embeddings pages use, and a sentence saying which one it is.

    The session's choice when it fits this dataset; else the best recorded run on it; else the automatic
    baseline, a workspace job (`ensure_baseline`: EASE, or popularity where EASE would not fit in memory; one job
    per dataset version for every tab and server): while it is queued or training, the popularity ranking counted
    here serves, the job's card follows it, and the page switches to its run once it finishes.
    """
    from views.ui.common import _root_key, workspace

    chosen = st.session_state.get(ACTIVE_MODEL_KEY) or _run_folder_from_url(record.name)
    if chosen:
        try:
            model = cached_model(chosen)
            if model.fits(ds):
                st.session_state[ACTIVE_MODEL_KEY] = chosen
                run = _run_of(chosen, record.name)
                state.write_url("run", run.id if run else None)  # a shared link opens this model
                unfinished_run_warning(run)  # a link may open a cancelled run: say so on every page
                status = f", {run.status}" if run is not None and run.status != "finished" else ""
                # the folder's name, not its server path: visitors need not see the server's file layout
                return model, f"the model you chose ({model.family}, {Path(chosen).name}{status})"
        except Exception:  # noqa: BLE001  a deleted or damaged folder: fall back below
            st.session_state.pop(ACTIVE_MODEL_KEY, None)
    state.write_url("run", None)  # no explicit choice: the link follows the best run
    run = best_run(workspace(), record.name, fits=lambda folder: _fitting(folder, ds))
    if run is not None:
        model = cached_model(run.artifact_dir)
        return model, f"run #{run.id} ({run.model}, the best NDCG@10 on this dataset)"
    baseline = ensure_baseline(jobs.store(), record.name, ds)
    if baseline.run is not None and _fitting(baseline.run.artifact_dir, ds):  # it finished since `best_run` looked
        run = baseline.run
        return cached_model(run.artifact_dir), f"run #{run.id} ({run.model}, the automatic baseline)"
    jobs.follow(BASELINE_KIND, record.name, {}, BASELINE_FOLLOW_KEY)  # its card; the page reruns when it ends
    if not baseline.job.active:
        _baseline_ended(record.name, baseline.job)
    model = _popularity(_root_key(), record.name, f"{record.created_at}|{record.path}", ds)
    return model, baseline_words(baseline.job)


def baseline_words(job) -> str:
    """What the pages serve while there is no finished run, and why, in words that are true for `job` (the
    automatic baseline's JobRecord)."""
    what = f"the automatic {baseline_name(job.family)} baseline (job #{job.id})"
    serving = "the popularity ranking (most-interacted items, counted in this server)"
    if job.queued:
        place = "next" if job.queue_position == 1 else f"number {job.queue_position}"
        return f"{serving} for now: {what} is queued, {place} in line; the page switches to it when it finishes"
    if job.active:
        doing = "is starting" if job.status == "pending" else "is training"
        return f"{serving} for now: {what} {doing}; the page switches to it when it finishes"
    if job.status == "finished":
        return f"{serving}: {what} finished, but its run does not fit this dataset; train a model on the Train page"
    return f"{serving}: {what} {job.status} and is not restarted by itself; train a model on the Train page"


def _baseline_ended(dataset: str, job) -> None:
    """Why the automatic baseline left no run, and a button that starts it again (a person's choice)."""
    reason = f": {md_escape(job.error)}" if job.error else ""
    with st.container(key="baseline_ended"):
        st.info(f"The automatic {md_escape(baseline_name(job.family))} baseline (job #{job.id}) {job.status}{reason}. "
                "The popularity ranking serves meanwhile.", icon=":material/info:")
        if st.button("Train the baseline again", key="baseline_again"):
            ensure_baseline(jobs.store(), dataset, again=True)
            st.rerun()


def _fitting(folder, ds) -> bool:
    try:
        return cached_model(folder).fits(ds)
    except Exception:  # noqa: BLE001  a damaged artifact: the next run is tried
        return False


def _run_folder_from_url(dataset: str) -> str | None:
    """The model folder of the URL's `run`, when it is a run of this dataset with saved files."""
    from views.ui.common import workspace

    raw = state.url_value("run")
    if raw is None or not raw.isdigit():
        return None
    try:
        run = workspace().get_run(int(raw))
    except RecsysError:  # deleted since the link was shared: fall back to the best run
        return None
    return str(run.artifact_dir) if run.dataset == dataset and run.artifact_dir else None


def _run_of(folder: str, dataset: str):
    """The run whose files are `folder` (None for a folder loaded from disk, which a link cannot name)."""
    from views.ui.common import workspace

    target = Path(folder).resolve()
    return next((r for r in workspace().list_runs(dataset=dataset)
                 if r.artifact_dir and Path(r.artifact_dir).resolve() == target), None)


UNFINISHED = {
    "cancelled": "was **cancelled** before it finished: these are its best weights so far, and its metrics cover "
                 "a sample of users",
    "no_improvement": "**never improved** on validation after its first check: the model learned little it can show",
}


def unfinished_run_warning(run) -> None:
    """A warning when `run` (a RunRecord, or None) did not finish normally, on any page that shows it."""
    if run is None or run.status == "finished":
        return
    what = UNFINISHED.get(run.status, f"is **{md_escape(run.status)}**, not a finished run")
    st.warning(f"Run #{run.id} ({md_escape(run.model)}) {what}. Its results are not those of a trained model: "
               "retrain it, or pick a finished run on the Train page.", icon=":material/warning:")


def page_dataset_and_model():
    """The sidebar's dataset (record and data) with the active model and its label: the opening of every
    page that shows a model's output. A model that cannot be loaded stops the page with the reason."""
    from views.ui.common import load_dataset, show_data_error, sidebar_dataset_selector

    record = sidebar_dataset_selector()
    ds = load_dataset(record)
    try:
        model, which = active_model(record, ds)
    except RecsysError as err:
        show_data_error(err, "Could not load a model")
        st.stop()
    return record, ds, model, which
