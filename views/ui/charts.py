"""Plotly figures for dataset statistics. Pure functions of arrays: no Streamlit, easy to test.

Long tails are drawn on log-log axes because interaction counts are heavy-tailed: on linear axes
everything past the head collapses onto the x axis.
"""

from __future__ import annotations

import html
import itertools

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

# A long-tail curve with more points than this is thinned on log-spaced ranks: the shape is
# unchanged and the browser stays responsive on datasets with 100k+ users.
MAX_CURVE_POINTS = 2000
# Fewer distinct rating values than this are drawn one bar per value instead of binned.
MAX_DISCRETE_RATINGS = 25

# 24 distinct colours (Plotly's Dark24): a map of 12 genres or a leaderboard of runs never repeats one.
PALETTE = tuple(px.colors.qualitative.Dark24)
MUTED = {"other": "#b0b0b0", "(none)": "#d9d9d9"}  # catch-all categories recede


def category_colours(labels: list[str] | np.ndarray) -> dict[str, str]:
    """One fixed colour per label, in the order given (the same labels get the same colours on every chart)."""
    out, distinct = {}, [str(x) for x in dict.fromkeys(str(v) for v in labels)]
    for label in distinct:
        out[label] = MUTED.get(label) or PALETTE[len([k for k in out if k not in MUTED]) % len(PALETTE)]
    return out


_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 320, "showlegend": False}


def chart_label(text: object, width: int | None = None) -> str:
    """Any user text (a title, genre, dataset or user name) as a Plotly label: cut to `width`, then
    HTML-escaped. Plotly renders tags such as <a> and <span style> in ticks, legends and hovers, so a
    title `<a href=...>` would become a link. Cut first, so no entity is split."""
    text = str(text)
    if width is not None and len(text) > width:
        text = text[:width - 1] + "…"
    return html.escape(text, quote=False)  # Plotly shows &quot; literally; quotes are harmless once < is escaped


def long_tail_frame(counts: np.ndarray, labels: np.ndarray | None = None,
                    max_points: int = MAX_CURVE_POINTS) -> pd.DataFrame:
    """Counts sorted from most to least active, with 1-based rank; thinned to `max_points` rows.

    Entities with zero interactions are dropped (they cannot sit on a log axis).
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    ranks = np.arange(1, len(order) + 1)
    if len(order) > max_points:
        keep = np.unique(np.geomspace(1, len(order), num=max_points).round().astype(np.int64)) - 1
        order, ranks = order[keep], ranks[keep]
    frame = pd.DataFrame({"rank": ranks, "count": counts[order]})
    if labels is not None:
        frame["label"] = np.asarray(labels, dtype=object)[order]
    return frame


def long_tail_figure(frame: pd.DataFrame, entity: str) -> go.Figure:
    """Rank vs interaction count on log-log axes; hover names the entity when labels are given."""
    hover = f"{entity.capitalize()} rank %{{x:,}}<br>%{{y:,}} interactions"
    custom = None
    if "label" in frame.columns:
        # Plotly renders a subset of HTML in hover labels, so titles are escaped.
        custom = frame["label"].map(chart_label).to_numpy()
        hover = "%{customdata}<br>" + hover
    fig = go.Figure(go.Scatter(x=frame["rank"], y=frame["count"], mode="lines+markers",
                                 marker={"size": 3}, customdata=custom,
                                 hovertemplate=hover + "<extra></extra>"))
    # hovermode "x": a point is found by moving along the curve, no need to hit a 3-pixel marker.
    fig.update_layout(title=f"Interactions per {entity} (long tail)", hovermode="x", **_LAYOUT)
    # dtick=1 labels powers of ten only; plotly's default also labels 2 and 5 in every decade.
    fig.update_xaxes(type="log", dtick=1, title_text=f"{entity.capitalize()} rank (most active first, log scale)")
    fig.update_yaxes(type="log", dtick=1, title_text="Interactions (log scale)")
    return fig


def ratings_frame(ratings: np.ndarray) -> pd.DataFrame:
    """Number of interactions per rating value (or per bin when ratings are near-continuous)."""
    r = pd.Series(np.asarray(ratings, dtype=np.float64)).dropna()
    if r.nunique() <= MAX_DISCRETE_RATINGS:
        counts = r.value_counts().sort_index()
        return pd.DataFrame({"rating": counts.index.map(_fmt_rating), "count": counts.to_numpy()})
    binned = pd.cut(r, bins=20).value_counts().sort_index()
    labels = [f"{iv.left:.2f} to {iv.right:.2f}" for iv in binned.index]
    return pd.DataFrame({"rating": labels, "count": binned.to_numpy()})


def ratings_figure(frame: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=frame["rating"].astype(str), y=frame["count"],
                           hovertemplate="Rating %{x}<br>%{y:,} interactions<extra></extra>"))
    fig.update_layout(title="Ratings", **_LAYOUT)
    fig.update_xaxes(type="category", title_text="Rating")
    fig.update_yaxes(title_text="Interactions")
    return fig


def counts_frame(counts: np.ndarray) -> pd.DataFrame:
    """Interactions per power-of-two bin of the count (1, 2-3, 4-7, ...): counts are heavy-tailed, so equal
    bins would put nearly everything in the first one."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[np.isfinite(c)]
    edges = 2.0 ** np.arange(0, max(1, int(np.ceil(np.log2(max(c.max(initial=1.0), 1.0) + 1))) + 1))
    edges = np.concatenate([[0.0], edges])
    hist, _ = np.histogram(c, bins=edges)
    labels = [_count_bin(lo, hi) for lo, hi in itertools.pairwise(edges)]
    frame = pd.DataFrame({"bin": labels, "interactions": hist, "low": edges[:-1]})
    return frame[(frame["interactions"] > 0) | (frame["low"] > 0)].drop(columns="low").reset_index(drop=True)


def _count_bin(lo: float, hi: float) -> str:
    first, last = int(np.ceil(lo)), int(np.ceil(hi)) - 1
    return f"{first:,}" if first >= last else f"{first:,}–{last:,}"


def counts_figure(frame: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=frame["bin"], y=frame["interactions"],
                           hovertemplate="Count %{x}<br>%{y:,} interactions<extra></extra>"))
    fig.update_layout(title="Counts (plays, clicks) per interaction", **_LAYOUT)
    fig.update_xaxes(type="category", title_text="Count (bins double in width)")
    fig.update_yaxes(type="log", title_text="Interactions (log scale)")
    return fig


def activity_frame(timestamps: np.ndarray) -> tuple[pd.DataFrame, str]:
    """Interactions per day, week or month (whichever gives a readable number of bars)."""
    when = pd.to_datetime(pd.Series(np.asarray(timestamps, dtype=np.int64)), unit="s")
    span_days = (when.max() - when.min()).days if len(when) else 0
    if span_days <= 120:
        period, bucket = "day", when.dt.floor("D")
    elif span_days <= 3 * 366:
        period, bucket = "week", when.dt.to_period("W").dt.start_time
    else:
        period, bucket = "month", when.dt.to_period("M").dt.start_time
    counts = bucket.value_counts().sort_index()
    return pd.DataFrame({"period": counts.index, "count": counts.to_numpy()}), period


def activity_figure(frame: pd.DataFrame, period: str) -> go.Figure:
    fmt = "%Y-%m" if period == "month" else "%Y-%m-%d"
    label = {"day": "Day", "week": "Week starting", "month": "Month"}[period]
    fig = go.Figure(go.Bar(x=frame["period"], y=frame["count"],
                           hovertemplate=f"{label} %{{x|{fmt}}}<br>%{{y:,}} interactions<extra></extra>"))
    fig.update_layout(title=f"Activity over time (interactions per {period})", **_LAYOUT)
    fig.update_xaxes(title_text=label)
    fig.update_yaxes(title_text=f"Interactions per {period}")
    return fig


def _fmt_rating(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
