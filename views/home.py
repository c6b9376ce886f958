"""Home: what the app does, the active dataset at a glance, and where to go next."""

from __future__ import annotations

import streamlit as st

from views.ui.common import dataset_stats, md_escape, sidebar_dataset_selector
from views.ui.nav import PAGES

st.title("RecSys Explorer")
st.markdown(
    "Train, compare and explain recommender models on your own interaction data: "
    "load a ratings or clicks file, check its statistics, train baselines and sequential models, "
    "compare them on the same split, and see *why* an item was recommended."
)

record = sidebar_dataset_selector()
stats = dataset_stats(record)

st.subheader("Active dataset")
st.markdown(f"**{md_escape(record.name)}**")
if record.source_file:
    st.caption(f"Source: {md_escape(record.source_file)}")
cols = st.columns(4)
cols[0].metric("Users", f"{stats['users']:,}")
cols[1].metric("Items", f"{stats['items']:,}")
cols[2].metric("Interactions", f"{stats['interactions']:,}")
cols[3].metric("Sparsity", f"{stats['sparsity']:.2%}")
st.caption("Switch datasets in the sidebar; load new ones on the Data page.")

st.subheader("Next steps")
for spec in PAGES:
    if spec.path != "views/home.py":
        st.page_link(spec.path, label=spec.title, icon=spec.icon)
        st.caption(spec.purpose)
