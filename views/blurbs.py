"""Blurbs: a language model writes a short text for a recommendation from facts only; every blurb is
checked against those facts before it is shown, and replaced by a template when it strays. Every step
is `recsys_core.blurbs.writer` (facts, prompt, check, template) and a `recsys_core.blurbs.backend.Backend`
(`local`: a model in this process, `remote`: an OpenAI-compatible server)."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from recsys_core.blurbs import endpoints, hub, local, remote
from recsys_core.blurbs import writer as blurbs
from recsys_core.blurbs.backend import Backend
from recsys_core.errors import LLMError, RecsysError
from recsys_core.evaluation.metrics import popularity_percentile
from recsys_core.insight import explain
from recsys_core.progress import Progress
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.recommend.export import to_csv_bytes
from recsys_core.recommend.topk import recommend
from views.ui import jobs, state
from views.ui.common import labelled, md_escape, plural, workspace
from views.ui.model_state import page_dataset_and_model

USER_KEY, ITEM_KEY = "blurbs_user", "blurbs_item"
RESULT_KEY = "blurbs_result"
BATCH_KIND = "blurbs"  # workspace job kind of a top-K batch
BACKENDS = {
    "local": f"Local: {local.DEFAULT_LABEL} (offline, bundled)",
    "hf": "Model folder in the workspace's llm/",
    "openai": "LLM server set up by the operator",
    "template": "No language model: template only",
}


# ---- cached objects ------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Indexing titles and attributes for the grounding check...", max_entries=4)
def _catalogue(_ds, dataset_key: str) -> blurbs.Catalogue:
    return blurbs.catalogue_for(_ds)


@st.cache_resource(show_spinner=False)
def _cache() -> blurbs.BlurbCache:
    """Blurbs already written in this server process, per model, user, item, backend and tone."""
    return blurbs.BlurbCache()


@st.cache_resource(show_spinner=False, max_entries=4)
def _hf_backend(source: str, cache_dir: str | None) -> local.TransformersBackend:
    """One backend object per model (`source`: "" for the bundled one, else what `hub.llm_source` returned);
    the weights themselves are loaded once per process and shared by every session
    (`recsys_core.blurbs.loading.load_lm`; the server's warm-up loads the local one at start)."""
    if source == "":
        return local.local_default_backend(cache_dir)
    return local.TransformersBackend(source)


# ---- page setup ----------------------------------------------------------------------------------

st.title("Blurbs")
st.caption("A language model writes a short text for one recommendation from the facts listed below. Each "
           "sentence is checked on its own: it may use only words of those facts and a fixed stock of tone and "
           "function words, and name no other title, attribute or number. A sentence that fails is dropped; a draft "
           "with no sentence of the model's own left is rewritten, then replaced by a template.")
record, ds, model, which = page_dataset_and_model()
dataset_key = f"{record.name}|{record.created_at}|{record.path}"
model_key = f"{model.identity}|{dataset_key}"
st.caption(f"Dataset **{md_escape(record.name)}** · model: {md_escape(which)}.")
catalogue = _catalogue(ds, dataset_key)
lengths = np.diff(ds.indptr)
listing = catalogue_of(ds)  # one label per item, as every page, the CLI and the API show it
titles = listing.labels


def _default_user() -> int:
    """The Explain page's user when there is one, else a user with a short but telling history."""
    chosen = st.session_state.get("explain_user")
    if isinstance(chosen, int) and 0 <= chosen < ds.n_users:
        return chosen
    fits = np.flatnonzero((lengths >= 3) & (lengths <= 10))
    return int(fits[np.argmax(lengths[fits])]) if len(fits) else 0


state.seed_index_from_url(USER_KEY, "user", ds.user_index)  # a reload or a shared link keeps user, item, tone
state.seed_index_from_url(ITEM_KEY, "item", ds.item_index)
if not isinstance(st.session_state.get(USER_KEY), int) or not 0 <= st.session_state[USER_KEY] < ds.n_users:
    st.session_state[USER_KEY] = _default_user()

cols = st.columns([2, 3, 2])
user = int(cols[0].selectbox("User", range(ds.n_users), key=USER_KEY, help="Type to search by user id.",
                             format_func=lambda u: f"{ds.user_ids[u]} ({plural(int(lengths[u]), 'item')})"))
history = ds.history(user)
recs = recommend(model, history, 10, popularity=ds.item_popularity, items=ds.items)
if recs.empty:
    st.info("This user has seen every item: there is nothing to recommend.")
    st.stop()
options = [int(i) for i in recs["item"]]
if st.session_state.get(ITEM_KEY) not in options:
    st.session_state[ITEM_KEY] = options[0]
item = int(cols[1].selectbox("Recommended item", options, key=ITEM_KEY,
                             format_func=lambda i: f"#{options.index(i) + 1} {titles[i]}",
                             help="This user's top 10 from the active model (seen items excluded)."))
state.write_id("user", ds.user_ids, user)
state.write_id("item", ds.item_ids, item)
state.bind("blurbs_tone", "tone", next(iter(blurbs.TONES)), options=list(blurbs.TONES))
tone = cols[2].selectbox("Tone", list(blurbs.TONES), key="blurbs_tone",
                         help="demo: 2-3 lively sentences · email: 2-3 warm sentences · push: one short sentence.")

# ---- backend -------------------------------------------------------------------------------------

kind = st.radio("Language model", list(BACKENDS), format_func=BACKENDS.get, key="blurbs_backend", horizontal=True)


def _backend() -> tuple[Backend | None, str]:
    """The chosen backend (None: template only) and a settings error, if any."""
    try:
        if kind == "local":
            return _hf_backend("", str(workspace().root / "llm")), ""
        if kind == "hf":
            where = ("; or a Hugging Face hub name (org/name: the operator allows the hub)"
                     if hub.hub_downloads_allowed() else
                     f". Hub names are off on this server (the operator can allow them with {hub.ENV_ALLOW_HUB}=1)")
            source = st.text_input("Model folder", key="blurbs_hf_model", placeholder="llm/my-model",
                                   help="Any causal language model transformers can load, as a folder inside the "
                                        f"workspace's {hub.LLM_DIR}/ folder (`llm/my-model` or `my-model`){where}.")
            if not source.strip():
                return None, ""
            return _hf_backend(hub.llm_source(source, workspace().root / hub.LLM_DIR), None), ""
        if kind == "openai":
            servers = endpoints.operator_endpoints()
            if not servers:
                st.info(f"No LLM server is set up on this server. The operator lists them in "
                        f"`{endpoints.ENV_ENDPOINTS}` (see the README); visitors pick one here.")
                return None, ""
            name = st.selectbox("Server", list(servers), key="blurbs_endpoint",
                                format_func=lambda n: f"{n} · model {servers[n].model or '?'}",
                                help="The servers the operator set up; this page cannot be pointed anywhere else.")
            return remote.OpenAIBackend.for_endpoint(servers[name]), ""
    except RecsysError as err:  # an unusable setting (LLMError): a folder outside llm/, a hub name, a bad list
        return None, str(err)
    return None, ""


backend, backend_error = _backend()
if backend_error:
    st.error(f"**Language model settings:** {md_escape(backend_error)} The template will be used.")
elif backend is None and kind != "template":
    st.info("Fill in the settings above to use this language model; until then the template is used.")
elif backend is not None:
    status = backend.status()  # a server is always "ready": nothing to load, nothing to say
    if status.state == "loaded":
        st.caption(f"Model ready: {md_escape(backend.label)} is loaded in this server process and shared by every "
                   "session.")
    elif status.state == "loading":
        st.caption(f"Loading {md_escape(backend.label)} in the background ({status.waited_s:.0f} s so far); a blurb "
                   "asked for now waits for it.")
    elif status.state == "idle":
        once = ("converts the bundled GGUF file into the workspace first (once, about 20-60 s)"
                if status.converting else "reads the workspace's converted copy (a few seconds)")
        st.caption(f"{md_escape(backend.label)} is not loaded yet: the first blurb {once}.")
    elif status.state == "failed":
        st.error(f"**The language model did not load:** {md_escape(status.error)} The template will be used.")
if backend is not None and backend.supports_guide:
    st.caption("In-process models are steered as they write: the blurb opens with the liked item and the "
               "recommendation, and words outside the facts and the fixed tone and function words, names, numbers "
               "and other genres are masked out token by token. A server only gets the prompt; every sentence, "
               "from either, is checked.")

# ---- facts ---------------------------------------------------------------------------------------

use_shap = st.toggle(
    "Cite the history items SHAP finds most influential", value=True, key="blurbs_shap",
    help="Off: cite the history items most similar to the recommendation by the model's item embeddings.")
explainer = explain.explainer_for(model, ds, dataset_key) if use_shap else None  # shared with Explain
pct = popularity_percentile(ds.item_popularity)


def _facts_for(u_history: np.ndarray, it: int) -> blurbs.BlurbFacts:
    liked, how = blurbs.influential_history_items(model, u_history, it, explainer=explainer)
    return blurbs.build_facts(ds, it, liked, how, pct)


with st.spinner("Finding the history items behind this recommendation..."):
    facts = _facts_for(history, item)
with st.expander("Facts the model may use (nothing else is sent)", expanded=True):
    st.json(facts.shown(), expanded=True)

# ---- one blurb -----------------------------------------------------------------------------------


def _wait_for_model(b: Backend | None) -> None:
    """Load an in-process model (or wait for the server's warm-up that is loading it), showing how long."""
    if b is None or b.is_loaded():
        return
    b.start_loading(warm=False)  # no-op while the warm-up already loads it: one load per process
    note, deadline = st.empty(), time.monotonic() + 900
    while (status := b.status()).state == "loading" and time.monotonic() < deadline:
        what = ("converting the bundled GGUF file into the workspace (once per workspace, about 20-60 s)"
                if status.converting else "reading the converted copy (once per server process, a few seconds)")
        note.info(f"Loading {md_escape(b.label)}: {what}; {status.waited_s:.0f} s so far.",
                  icon=":material/hourglass_top:")
        time.sleep(0.5)
    note.empty()


def _status_line(event: blurbs.BlurbEvent, words: int, rejected: list[tuple[str, ...]]) -> str:
    why = ""
    if rejected:
        why = f"Draft {len(rejected)} was rejected ({md_escape('; '.join(rejected[-1]))}), so it is not shown. "
    if event.kind == "checking":
        return why + f"Checking draft {event.draft} against the facts..."
    return why + f"Writing draft {event.draft}... {plural(words, 'word')} so far (shown once it passes the check)."


def _write(b: Backend | None) -> blurbs.BlurbResult:
    """Write with the drafts kept in a hidden buffer: the page shows only status until the check passes, so
    no rejected draft ever reaches the browser."""
    _wait_for_model(b)
    run = blurbs.BlurbStream(facts, tone, b, catalogue)
    status = st.empty()
    buffer: list[str] = []
    rejected: list[tuple[str, ...]] = []
    shown_at = 0.0
    for event in run.events():
        if event.kind == "draft":
            buffer = []
        elif event.kind == "text":
            buffer.append(event.text)
        elif event.kind == "rejected":
            rejected.append(event.problems)
        if event.kind != "text" or time.monotonic() - shown_at > 0.25:  # a few redraws a second is enough
            status.info(_status_line(event, len("".join(buffer).split()), rejected), icon=":material/edit_note:")
            shown_at = time.monotonic()
    status.empty()
    return run.result


key = blurbs.BlurbCache.key(model_key, str(ds.user_ids[user]), facts, backend, tone)
if st.button("Write blurb", key="blurbs_write", type="primary"):
    cached = _cache().get(key)
    st.session_state[RESULT_KEY] = (key, cached or _write(backend), model_key, which)
    _cache().put(key, st.session_state[RESULT_KEY][1])

shown = st.session_state.get(RESULT_KEY)
if shown and shown[0] != key and len(shown) > 2 and shown[2] != model_key:
    # Written for the model the page used then, e.g. the popularity ranking before the automatic baseline finished
    # (the page switches to it when it does): the blurb is not shown under a model that did not recommend the item.
    st.info(f"The last blurb was written for {md_escape(shown[3])}; the page now uses {md_escape(which)}, so its "
            "recommendations changed. Write the blurb again for this model.", icon=":material/swap_horiz:")
if shown and shown[0] == key:
    result: blurbs.BlurbResult = shown[1]
    with st.container(key="blurbs_final", border=True):
        st.markdown(md_escape(result.text))
    message = f"**{result.source}** · {md_escape(result.badge())}"
    if result.source == "template":
        st.warning(f"{message} Reason: {md_escape(result.reason)}", icon=":material/rule:")
    else:
        st.success(message, icon=":material/verified:")
    first = f"{result.first_token_s:.2f} s" if result.first_token_s is not None else "n/a"
    backend_name = result.backend.replace("`", "'")  # shown as code: a URL must not turn into a link
    st.caption(f"Backend `{backend_name}` · {result.seconds:.2f} s in all · first text after {first} · "
               f"{result.tokens} tokens generated · {len(result.attempts)} draft(s).")
    if result.dropped:
        with st.expander(f"{plural(len(result.dropped), 'sentence')} dropped from the shown draft"):
            for n, dropped in enumerate(result.dropped, 1):
                st.markdown(f"{n}. " + md_escape("; ".join(dropped.problems)))
    rejected = [a for a in result.attempts if a.problems]
    if rejected:
        with st.expander(f"Why {len(rejected)} draft(s) were rejected"):
            for n, attempt in enumerate(rejected, 1):
                st.markdown(f"{n}. " + md_escape("; ".join(attempt.problems)))

# ---- batch ---------------------------------------------------------------------------------------

st.subheader("Blurbs for this user's top K")
st.caption("One workspace job writes them all with the model loaded once: every tab sees its progress and can "
           "cancel it, and a reload finds the result.")
c = st.columns([1, 3], vertical_alignment="bottom")
k = int(c[0].number_input("K", 1, 20, 5, key="blurbs_batch_k"))
batch_params = {"model": model_key, "user": str(ds.user_ids[user]), "k": k, "tone": tone,
                "backend": backend.id if backend is not None else "none", "shap": bool(use_shap)}
running = jobs.current(BATCH_KIND, record.name, batch_params)


def _batch_work(b: Backend | None, u: int, top: int, tone_name: str, shap_explainer: explain.Explainer | None):
    """The job's work, with this run's choices bound (a rerun of the page must not change a running job)."""
    def work(progress: Progress) -> dict:
        if b is not None and not b.is_loaded():
            progress.update(0, top, message="loading the language model (once per server process)")
            try:
                b.load()  # waits for the warm-up's load if it is still running: one copy per process
            except LLMError:
                pass  # every blurb then falls back to the template, with this reason
        table = blurbs.batch_blurbs(
            ds, model, [u], top, b, tone_name, model_id=model_key, catalogue=catalogue, cache=_cache(),
            liked=lambda h, it: blurbs.influential_history_items(model, h, it, explainer=shap_explainer),
            progress=progress)
        return {"table": table}
    return work


if c[1].button(f"Write blurbs for the top {k}", key="blurbs_batch", disabled=bool(running and running.active)):
    jobs.start(BATCH_KIND, record.name, batch_params, _batch_work(backend, user, k, tone, explainer),
               title=f"Blurbs for user {ds.user_ids[user]}, top {k} ({tone})")
    st.rerun()
jobs.follow(BATCH_KIND, record.name, batch_params, key="blurbs_batch_job")
jobs.ended_note(running)
done = jobs.last_result(BATCH_KIND, record.name, batch_params)
if done is not None and "table" in done:
    table = done["table"]
    counts = table["blurb_source"].value_counts().to_dict()
    st.caption(" · ".join(f"{n} {src}" for src, n in counts.items()) +
               f" (backend {md_escape(batch_params['backend'])}).")
    with st.container(key="blurbs_batch_result"):
        st.dataframe(labelled(table, listing)[["rank", "title", "blurb", "blurb_source", "because", "blurb_reason"]],
                     hide_index=True, key="blurbs_batch_frame")
    st.download_button("Download recommendations with blurbs (CSV)", to_csv_bytes(table),
                       file_name=f"blurbs_{ds.user_ids[user]}_top{len(table)}.csv", mime="text/csv",
                       key="blurbs_download", help="Cells that a spreadsheet would run as formulas are neutralised.")
