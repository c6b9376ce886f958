"""Embeddings: a 2-D/3-D map of a model's item (or user) space, how far to trust it, an item's true
neighbours, a user's history and recommendations on the map, and two models side by side.

Maps, neighbours and clusters come from `recsys_core.insight.project` (which caches them per embedding
fingerprint and settings); UMAP and t-SNE run as workspace jobs while PCA is shown: any tab sees their
progress and can cancel them, and a reload shows the stored map.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from recsys_core.errors import RecsysError
from recsys_core.insight import project
from recsys_core.models.base import capabilities_of
from recsys_core.recommend.catalogue import catalogue_of
from recsys_core.recommend.topk import pick_user, recommend_many, search_items
from views.ui import charts, jobs, state
from views.ui.common import md_escape, plural, show_data_error, workspace
from views.ui.model_state import cached_model, page_dataset_and_model, run_label

JOBS_KEY = "emb_jobs"  # session state: slot ("a"/"b") -> id of the map job this tab started for that slot
USER_KEY = "emb_user"
ACTIVE = "__active__"
GL_THRESHOLD = 1500  # more points than this are drawn with WebGL (Scattergl)
MAX_OVERLAY_HISTORY = 30  # the last items of a long history, so the path stays readable

st.title("Embeddings")
record, ds, active, which = page_dataset_and_model()
jobs.running_jobs_panel("emb")
runs = sorted((r for r in workspace().list_runs(dataset=record.name) if r.artifact_dir),
              key=lambda r: -(r.metrics or {}).get("ndcg@10", 0.0))
run_by_dir = {r.artifact_dir: r for r in runs}
if not runs and not active.capabilities.similar_items:  # nothing to map yet (the automatic baseline is training)
    st.info(f"A map needs a model whose item vectors mean something; this page serves {which}.",
            icon=":material/hourglass_top:")
    st.stop()
titles = catalogue_of(ds).labels  # one label per item, as every page, the CLI and the API show it
version = f"{record.name}|{record.created_at}"


def _model_label(key: str) -> str:
    return f"Active model: {which}" if key == ACTIVE else run_label(run_by_dir[key])


def _load(key: str):
    if key == ACTIVE:
        return active
    model = cached_model(key)
    model.check_fits(ds)
    return model


def _default_other(first) -> str | None:
    """The best run that reads items the other way (text vs interactions) than the loaded model `first`; else
    the best run of another family; else any other run."""
    text, first_family = first.capabilities.text, first.family
    for test in (lambda r: capabilities_of(r.model, r.config).text != text, lambda r: r.model != first_family,
                 lambda r: True):
        hit = next((r.artifact_dir for r in runs if test(r)), None)
        if hit:
            return hit
    return None


# ---- controls -------------------------------------------------------------------------------------

st.caption(f"Dataset **{md_escape(record.name)}**. Each point is an item (or a user) placed so that similar "
           "embeddings land close together; neighbours listed below are always measured in the model's own space.")
top = st.columns([3, 1.2, 1.2, 1], vertical_alignment="bottom")
model_key = top[0].selectbox("Model", [ACTIVE, *run_by_dir], format_func=_model_label, key="emb_model",
                             help="The active model (chosen on the Train page) or any run on this dataset.")
state.bind("emb_points", "points", "items", options=["items", "users"])
points = top[1].radio("Points", ["items", "users"], horizontal=True, key="emb_points")
state.bind("emb_method", "method", next(iter(project.METHODS)), options=list(project.METHODS))
method = top[2].selectbox("Method", list(project.METHODS), format_func=project.METHODS.get, key="emb_method",
                          help="PCA: linear, instant, keeps global layout. UMAP / t-SNE: non-linear, keep local "
                               "neighbourhoods better, take seconds to minutes (they run in the background).")
state.bind("emb_dims", "dims", 2, parse=int, options=[2, 3])
dims = top[3].radio("Map", [2, 3], format_func=lambda d: f"{d}-D", horizontal=True, key="emb_dims")

has_genres = bool((ds.items["genres"] != "").any())
colourings = [*(["first genre"] if has_genres else []), "popularity (log)", "k-means cluster"]
row = st.columns([2, 1, 2], vertical_alignment="bottom")
state.bind("emb_colour", "colour", colourings[0], options=colourings)
colour = row[0].selectbox("Colour by", colourings, key="emb_colour",
                          help="Popularity: log10(1 + interactions) (history length for users). k-means runs in "
                               "the original embedding space, not on the map.")
k_clusters = row[1].number_input("Clusters", 2, 30, 8, key="emb_k", disabled=colour != "k-means cluster")
compare = row[2].toggle("Compare with a second model", key="emb_compare", disabled=not runs,
                        help="Same method and settings, side by side.")

with st.expander("Map settings"), st.form("emb_settings", border=False):
    cols = st.columns(4)
    seed = int(cols[0].number_input("Seed", 0, 2**31 - 1, 0, key="emb_seed"))
    n_neighbors = int(cols[1].number_input("UMAP neighbours", 2, 200, 15, key="emb_umap_k"))
    min_dist = float(cols[2].number_input("UMAP min. distance", 0.0, 1.0, 0.1, step=0.05, key="emb_umap_dist"))
    n_epochs = int(cols[3].number_input("UMAP epochs", 10, 1000, 200, key="emb_umap_epochs",
                                        help="200 keeps 10,000 items under a minute on a laptop CPU."))
    cols = st.columns(4)
    perplexity = float(cols[0].number_input("t-SNE perplexity", 2.0, 100.0, 30.0, key="emb_perplexity"))
    max_users = int(cols[1].number_input("Users to map (sample)", 100, 50_000, 5000, step=500, key="emb_max_users"))
    normalize = cols[2].checkbox("Cosine geometry (L2-normalise)", True, key="emb_normalize",
                                 help="Map directions, as the cosine neighbour search does, not vector lengths.")
    st.form_submit_button("Apply")
params = project.ProjectionParams(method=method, dims=dims, seed=seed, normalize=normalize, n_neighbors=n_neighbors,
                                  min_dist=min_dist, n_epochs=n_epochs, perplexity=perplexity)


# ---- vectors, labels, colours ---------------------------------------------------------------------


@st.cache_resource(show_spinner="Embedding users...", max_entries=4)
def _user_vectors(_model, model_fp: str, dataset_version: str, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(user indices, their embeddings) for at most `limit` users; keyed by the model's item fingerprint."""
    rows = project.sample_rows(ds.n_users, limit, seed)
    seqs = ds.sequences()
    return rows, _model.user_embeddings([seqs[u] for u in rows])


def _space(model) -> dict:
    """Vectors to map for the chosen points, with their ids, hover text and colour values."""
    items_vec = model.item_embeddings()
    fp = project.fingerprint(items_vec)
    if points == "items":
        rows, vectors = np.arange(ds.n_items), items_vec
        hover = _item_hover()
    else:
        rows, vectors = _user_vectors(model, fp, version, max_users, seed)
        fp = project.fingerprint(vectors)
        hover = _user_hover(rows)
    return {"rows": rows, "vectors": vectors, "fp": fp, "hover": hover, "colour": _colour(vectors, rows)}


def _item_hover() -> np.ndarray:
    text = pd.Series(titles).map(html.escape)  # plotly renders a subset of HTML in hover labels
    text = text + "<br>genres: " + ds.items["genres"].map(html.escape).to_numpy()
    return (text + "<br>interactions: " + pd.Series(ds.item_popularity).astype(str)).to_numpy()


def _user_hover(rows: np.ndarray) -> np.ndarray:
    ids = pd.Series(ds.user_ids[rows]).astype(str).map(html.escape)
    return ("user " + ids + "<br>history: " + pd.Series(np.diff(ds.indptr)[rows]).astype(str) + " items").to_numpy()


def _colour(vectors: np.ndarray, rows: np.ndarray) -> tuple[str, np.ndarray]:
    """('category', labels) or ('value', numbers) for the chosen colouring."""
    if colour == "k-means cluster":
        labels = project.kmeans_clusters(vectors, int(k_clusters), seed)
        return "category", np.array([f"cluster {c + 1}" for c in labels], dtype=object)
    if colour == "popularity (log)":
        counts = ds.item_popularity if points == "items" else np.diff(ds.indptr)[rows]
        return "value", project.log_popularity(counts)
    labels = project.first_attribute(ds.items["genres"].tolist())
    if points == "items":
        return "category", labels
    return "category", project.dominant_attribute(ds.indptr, ds.seq_items, labels)[rows]


# ---- projections: PCA inline, UMAP / t-SNE in the background --------------------------------------


def _map_params(space: dict) -> dict:
    """What a map job is found by, from any tab: the embedding space's fingerprint and the settings used."""
    return {"fp": space["fp"], "points": points, "settings": list(params.key())}


def _start_map(space: dict, slot: str, title: str) -> None:
    work = project.projection_work(space["vectors"], params)
    st.session_state.setdefault(JOBS_KEY, {})[slot] = jobs.start("projection", record.name, _map_params(space),
                                                                  work, title)


def _projection(space: dict, slot: str, title: str) -> project.Projection | None:
    """The map if ready. PCA is computed now; UMAP/t-SNE come from a workspace job (started here if none
    ran for these settings, followed if one runs, from any tab), or from its stored result."""
    hit = project.cached_projection(space["vectors"], params, space["fp"])
    if hit is not None or method == "pca":
        return hit or project.project(space["vectors"], params)
    key = _map_params(space)
    stored = jobs.last_result("projection", record.name, key)
    if stored is not None:
        return project.from_result(stored, space["fp"])
    job = jobs.current("projection", record.name, key)
    mine = st.session_state.setdefault(JOBS_KEY, {})
    if mine.get(slot) is not None and (job is None or mine[slot] != job.id):
        jobs.store().request_cancel(mine.pop(slot))  # settings changed mid-run: stop a map nobody will see
    if job is None:
        _start_map(space, slot, title)
    return None


def _job_panel(space: dict, slot: str, title: str) -> None:
    """Progress of this slot's map job (any tab's), or why the last one left no map."""
    key = _map_params(space)
    job = jobs.current("projection", record.name, key)
    if job is not None and not job.active:
        jobs.ended_note(job)
        st.button(f"Run {project.METHODS[method]} again", key=f"emb_rerun_{slot}", on_click=_start_map,
                  args=(space, slot, title))
        return
    jobs.follow("projection", record.name, key, f"emb_{slot}")


# ---- the figure -----------------------------------------------------------------------------------


def _marker_trace(xyz: np.ndarray, gl: bool, **kw) -> go.BaseTraceType:
    if xyz.shape[1] == 3:
        return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **kw)
    return (go.Scattergl if gl else go.Scatter)(x=xyz[:, 0], y=xyz[:, 1], **kw)


def _figure(proj: project.Projection, space: dict, title: str, focus: dict | None) -> go.Figure:
    coords, hover = proj.coords, space["hover"]
    gl = len(coords) > GL_THRESHOLD
    size = 3 if len(coords) > 5000 else 5
    kind, values = space["colour"]
    fig = go.Figure()
    template = "%{hovertext}<extra></extra>"
    if kind == "category":
        cats, counts = np.unique(values.astype(str), return_counts=True)
        ordered = cats[np.argsort(-counts, kind="stable")]
        colours = charts.category_colours(ordered)
        for cat in ordered:
            sel = values.astype(str) == cat
            fig.add_trace(_marker_trace(coords[sel], gl, mode="markers", name=html.escape(cat), hovertext=hover[sel],
                                        hovertemplate=template,
                                        marker={"size": size, "opacity": 0.7, "color": colours[cat]}))
    else:
        fig.add_trace(_marker_trace(coords, gl, mode="markers", name=colour, hovertext=hover, hovertemplate=template,
                                    marker={"size": size, "opacity": 0.75, "color": values, "colorscale": "Viridis",
                                            "colorbar": {"title": {"text": "log10(1+n)"}}}))
    if focus:
        _add_focus(fig, coords, hover, focus, gl)
    axes = [f"{proj.label} {i}" for i in (1, 2, 3)]
    fig.update_layout(title=title, height=620, legend={"itemsizing": "constant"}, margin={"l": 10, "r": 10, "t": 50})
    if coords.shape[1] == 3:
        fig.update_layout(scene={"xaxis_title": axes[0], "yaxis_title": axes[1], "zaxis_title": axes[2]})
    else:
        fig.update_xaxes(title_text=axes[0])
        fig.update_yaxes(title_text=axes[1])
    return fig


def _add_focus(fig: go.Figure, coords: np.ndarray, hover: np.ndarray, focus: dict, gl: bool) -> None:
    """Searched item + its original-space neighbours (lines show where they landed), user history and recs."""
    if "item" in focus:
        item, nbrs = focus["item"], focus["neighbours"]
        spokes = np.full((3 * len(nbrs), coords.shape[1]), np.nan)
        spokes[0::3], spokes[1::3] = coords[item], coords[nbrs]
        fig.add_trace(_marker_trace(spokes, gl, mode="lines", name="neighbour links", hoverinfo="skip",
                                    line={"color": "rgba(40,40,40,0.45)", "width": 1}))
        fig.add_trace(_marker_trace(coords[nbrs], gl, mode="markers", name="nearest neighbours (original space)",
                                    hovertext=hover[nbrs], hovertemplate="%{hovertext}<extra>neighbour</extra>",
                                    marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 2},
                                            "symbol": "circle-open" if coords.shape[1] == 3 else "circle"}))
        fig.add_trace(_marker_trace(coords[[item]], gl, mode="markers", name="searched item",
                                    hovertext=hover[[item]], hovertemplate="%{hovertext}<extra>searched</extra>",
                                    marker={"size": 16, "color": "crimson", "symbol": "diamond" if coords.shape[1] == 3
                                            else "star", "line": {"color": "white", "width": 1}}))
    if "history" in focus:
        hist, recs = focus["history"], focus["recs"]
        fig.add_trace(_marker_trace(coords[hist], gl, mode="lines+markers", name="user history (oldest to newest)",
                                    hovertext=hover[hist], hovertemplate="%{hovertext}<extra>history</extra>",
                                    line={"color": "darkorange", "width": 1.5},
                                    marker={"size": 8, "color": "darkorange"}))
        fig.add_trace(_marker_trace(coords[recs], gl, mode="markers", name="recommendations",
                                    hovertext=hover[recs], hovertemplate="%{hovertext}<extra>recommended</extra>",
                                    marker={"size": 12, "color": "seagreen", "symbol": "diamond",
                                            "line": {"color": "white", "width": 1}}))
        if coords.shape[1] == 2 and len(hist):
            last = coords[hist[-1]]
            for r in recs:  # arrows from the most recent item to each recommendation
                fig.add_annotation(x=coords[r, 0], y=coords[r, 1], ax=last[0], ay=last[1], xref="x", yref="y",
                                   axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1, arrowwidth=1,
                                   arrowcolor="seagreen", opacity=0.7, text="")


def _metrics(proj: project.Projection, n: int) -> None:
    cols = st.columns(4)
    cols[0].metric("Trustworthiness", f"{proj.trustworthiness:.3f}",
                   help=f"Share of map neighbours (k={project.TRUST_NEIGHBOURS}) that are also close in the model's "
                        f"space, on {proj.trust_sample:,} sampled points. Near 1: distances on the map can be trusted "
                        "locally; below ~0.8: clusters and gaps on the map may be artefacts.")
    cols[1].metric("Projection time", f"{proj.seconds:,.2f} s", help=f"+ {proj.trust_seconds:.2f} s for trust")
    cols[2].metric("Points", f"{n:,}")
    if proj.explained_variance is not None:
        cols[3].metric("Variance kept", f"{proj.explained_variance:.0%}", help="Share of the variance PCA keeps.")


# ---- search and user overlay ----------------------------------------------------------------------


def _search() -> tuple[int | None, int]:
    cols = st.columns([2, 3, 1], vertical_alignment="bottom")
    query = cols[0].text_input("Find an item", key="emb_search", placeholder="type part of a title",
                               help="Highlights the item and its nearest neighbours in the model's own space.")
    hits = search_items(ds.items, query, 50, ds.item_popularity) if query.strip() else np.array([], dtype=np.int64)
    if query.strip() and not len(hits):
        cols[1].warning(f"No item title contains {md_escape(query)}.")
    options = [int(i) for i in hits]
    if st.session_state.get("emb_search_pick") not in options:
        # A new query starts at its best (most popular) match. Set through session state, not `index`:
        # the browser keeps showing a keyed widget's old value when only its options change.
        st.session_state["emb_search_pick"] = options[0] if options else None
    item = cols[1].selectbox("Matches", options, format_func=lambda i: str(titles[i]), key="emb_search_pick",
                             disabled=not options)
    k = int(cols[2].number_input("Neighbours", 1, 50, 10, key="emb_nn_k"))
    return item, k


def _pick_random_user() -> None:
    st.session_state[USER_KEY] = str(ds.user_ids[pick_user(ds, "random",
                                                           seed=int(datetime.now(UTC).timestamp() * 1e6) % 2**32)])


def _user_overlay() -> np.ndarray | None:
    """The chosen user's history (item indices, oldest first), or None."""
    cols = st.columns([2, 1, 3], vertical_alignment="bottom")
    state.bind(USER_KEY, "overlay", "")  # the overlay survives a reload and travels in a link
    typed = cols[0].text_input("Overlay a user", key=USER_KEY, placeholder="user id",
                               help="Draws the user's history (in order) and each model's top-10 on the item map.")
    cols[1].button("Random user", key="emb_user_random", on_click=_pick_random_user)
    if not typed.strip():
        return None
    user = ds.user_index.get(typed.strip())
    if user is None:
        cols[2].warning(f"No user {md_escape(typed)} in this dataset.")
        return None
    history = ds.history(user)
    cols[2].caption(f"User {md_escape(typed)}: {plural(len(history), 'item')} in the history"
                    + (f" (last {MAX_OVERLAY_HISTORY} drawn)" if len(history) > MAX_OVERLAY_HISTORY else "")
                    + "; arrows point from the latest item to the model's top-10.")
    return history


def _overlay_focus(model, history: np.ndarray) -> dict:
    """History path + this model's top-10 (popularity stands in when the model scores the history flat)."""
    top_k = recommend_many(model, [history], 10, popularity=ds.item_popularity)
    return {"history": history[-MAX_OVERLAY_HISTORY:], "recs": top_k.items[0][top_k.items[0] >= 0]}


def _neighbour_table(space: dict, proj: project.Projection, item: int, k: int) -> tuple[pd.DataFrame, np.ndarray]:
    nbrs, sims = project.nearest_neighbours(space["vectors"], item, k)
    frame = pd.DataFrame({"title": titles[nbrs], "cosine similarity": sims, "rank on the map":
                          project.map_ranks(proj.coords, item, nbrs), "item_id": ds.item_ids[nbrs]})
    return frame, nbrs


# ---- page body ------------------------------------------------------------------------------------

slots = [("a", model_key)]
if compare and runs:
    default_b = _default_other(_load(model_key) if model_key != ACTIVE else active)
    options_b = list(run_by_dir)
    if st.session_state.get("emb_model_b") not in options_b:
        st.session_state["emb_model_b"] = default_b
    slots.append(("b", st.selectbox("Second model", options_b, format_func=_model_label, key="emb_model_b")))

focus_item, nn_k, overlay = None, 10, None
if points == "items":
    focus_item, nn_k = _search()
    overlay = _user_overlay()
else:
    st.caption(f"Users are a seeded sample of at most {max_users:,} (Map settings), embedded with the model's "
               "`user_embeddings` of their full history; colour by attribute uses each user's most frequent one.")

columns = st.columns(len(slots)) if len(slots) > 1 else [st.container()]
neighbour_sets = []
for (slot, key), col in zip(slots, columns, strict=True):
    with col:
        try:
            model = _load(key)
            space = _space(model)
            map_title = f"{project.METHODS[method]} map of {points}: {_model_label(key)}"
            proj = _projection(space, slot, map_title)
            if proj is None:  # a background map is on its way: show progress, and PCA meanwhile
                _job_panel(space, slot, map_title)
                proj = project.project(space["vectors"], params, method="pca")
                st.caption(f"Showing PCA until {project.METHODS[method]} is ready.")
        except RecsysError as err:
            show_data_error(err, "Could not draw this map")
            continue
        focus: dict = {} if overlay is None else _overlay_focus(model, overlay)
        if focus_item is not None and points == "items":
            table, nbrs = _neighbour_table(space, proj, focus_item, nn_k)
            focus |= {"item": focus_item, "neighbours": nbrs}
            neighbour_sets.append(set(nbrs.tolist()))
        name = _model_label(key) if len(slots) > 1 else f"{model.family}"
        title = f"{proj.label} of {points}: {html.escape(name)}"
        _metrics(proj, len(proj.coords))
        st.plotly_chart(_figure(proj, space, title, focus or None), key=f"emb_chart_{slot}")
        if focus_item is not None and points == "items":
            st.markdown(f"**Nearest neighbours of {md_escape(titles[focus_item])}** in the model's own space "
                        "(cosine). A large *rank on the map* means the map tore this neighbourhood apart.")
            with st.container(key=f"emb_neighbours_{slot}"):
                st.dataframe(table, hide_index=True, key=f"emb_neighbours_table_{slot}",
                             column_config={"cosine similarity": st.column_config.NumberColumn(format="%.3f")})

if len(neighbour_sets) == 2:
    shared = len(neighbour_sets[0] & neighbour_sets[1])
    st.caption(f"The two models agree on {shared} of the {nn_k} nearest neighbours of the searched item.")
