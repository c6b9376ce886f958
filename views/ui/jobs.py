"""Long in-server work as workspace jobs, for the pages: start one, follow it from any tab, cancel it, and
find the last finished result after a reload.

A job is found by (kind, dataset, parameters), never by the tab that started it: a second tab opening the
same view sees the same job, and a reload shows the last finished result without recomputing. Every tab
also lists every running job of the workspace (`running_jobs_panel`) with a Cancel button. The owner
column records which browser session started a job (a random token per session), for the labels only:
any tab may cancel any job.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import streamlit as st

from recsys_core.background import WorkspaceJob
from recsys_core.errors import RecsysError
from recsys_core.models.profiles import human_duration
from recsys_core.progress import Progress
from recsys_core.training.jobs import watch_queue
from recsys_core.workspace.jobs import JobRecord, JobStore
from views.ui.common import md_escape, workspace

OWNER_KEY = "jobs_owner"  # session state: this browser session's random token
_SEEN_KEY = "jobs_seen_active"  # session state: {panel key: id of the active job it showed last run}


@st.cache_resource(show_spinner=False)
def _store(root: str) -> JobStore:
    store = JobStore(workspace())  # opening it marks jobs a previous server left running as interrupted
    watch_queue(store)  # queued training jobs start when a slot frees, even if no Train page is open
    return store


def store() -> JobStore:
    return _store(str(workspace().root))


def owner() -> str:
    """This browser session's token (a new tab or a reload is a new session)."""
    return st.session_state.setdefault(OWNER_KEY, secrets.token_hex(8))


def start(kind: str, dataset: str, params: dict, work: Callable[[Progress], dict | None], title: str) -> int:
    """Start `work` as a workspace job of this session; its id."""
    return WorkspaceJob.start(store(), kind, dataset, work, params=params, owner=owner(), title=title).id


def current(kind: str, dataset: str, params: dict) -> JobRecord | None:
    """The newest job of this view, whatever its status (None if it never ran)."""
    return store().latest(kind, dataset, params, status=None)


def last_result(kind: str, dataset: str, params: dict) -> dict[str, Any] | None:
    """The last finished job's result for this view (read from the workspace), or None."""
    job = store().latest(kind, dataset, params)
    if job is None:
        return None
    try:
        return store().load_result(job.id)
    except (OSError, ValueError, RecsysError):  # its files were removed: compute again
        return None


def seconds_per_unit(kind: str, dataset: str, match: Callable[[dict], bool], units: Callable[[dict], float]) -> float | None:
    """Measured seconds per unit of work (`units(params)`: users, items, ...) of the newest finished job of
    `kind` whose parameters `match`: the time a page promises comes from this machine, not from a guess."""
    for job in store().list(dataset=dataset, kind=kind, limit=20):
        if job.status == "finished" and match(job.params) and units(job.params) > 0:
            return job.elapsed_s / units(job.params)
    return None


def progress_text(job: JobRecord) -> str:
    if job.queued:
        return f"queued, {'next' if job.queue_position == 1 else f'number {job.queue_position}'} in line"
    text = md_escape(job.message) if job.message else f"running for {human_duration(job.elapsed_s)}"
    if job.cancel:
        return f"Cancelling... ({text})"
    if job.eta_s is not None:
        text += f" · about {human_duration(job.eta_s)} left"
    return text


def _cancel(job_id: int) -> None:
    store().request_cancel(job_id)


def job_card(job: JobRecord, key: str) -> None:
    """Progress bar, what it is doing, time left and a Cancel button (any tab may cancel any job)."""
    mine = " · started in this tab" if job.owner == owner() else ""
    with st.container(border=True, key=f"{key}_card_{job.id}"):
        st.markdown(f"**{md_escape(job.title or job.kind)}** · job #{job.id} · {job.status}{mine}")
        st.progress(min(max(job.fraction, 0.0), 1.0), text=progress_text(job))
        st.button("Cancel", key=f"{key}_cancel_{job.id}", on_click=_cancel, args=(job.id,), disabled=job.cancel,
                  help="Stops within 2 s, from any tab; nothing is stored for a cancelled job.")


def ended_note(job: JobRecord | None) -> None:
    """Why the last run of this view did not leave a result."""
    if job is None or job.active or job.status == "finished":
        return
    if job.status == "cancelled":
        st.info(f"The last run (job #{job.id}) was cancelled after {human_duration(job.elapsed_s)}.")
    else:
        st.error(f"The last run (job #{job.id}) {job.status}: {md_escape(job.error)}")


@st.fragment(run_every=1.0)
def follow(kind: str, dataset: str, params: dict, key: str) -> None:
    """This view's running job (from any tab), redrawn every second; the page reruns once it ends."""
    job = current(kind, dataset, params)
    seen = st.session_state.setdefault(_SEEN_KEY, {})
    if job is not None and job.active:
        seen[key] = job.id
        job_card(job, key)
    elif seen.pop(key, None) is not None:
        st.rerun()  # it ended: draw its result (or why there is none) with the rest of the page


@st.fragment(run_every=2.0)
def running_jobs_panel(key: str) -> None:
    """Every job running in this workspace, from any tab and any page, each with Cancel."""
    running = store().list(active_only=True, kind=None)
    if not running:
        return
    queued = sum(job.queued for job in running)
    with st.expander(f"Jobs running in this workspace ({len(running) - queued})"
                     + (f", {queued} queued" if queued else ""), expanded=False):
        for job in running:
            cols = st.columns([4, 1])
            cols[0].markdown(f"#{job.id} **{md_escape(job.title or job.kind)}** on {md_escape(job.dataset)} · "
                             f"{progress_text(job)}")
            cols[1].button("Cancel", key=f"{key}_all_cancel_{job.id}", on_click=_cancel, args=(job.id,),
                           disabled=job.cancel)
