"""The app's pages, in the order a user walks them. Adding a page is one line in `PAGES`.

Kept apart from `app.py` so the home page can list the other pages without importing the
entry point (which would run it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    """One page: its script (relative to `app.py`), menu title, Material icon and a one-line purpose."""

    path: str
    title: str
    icon: str
    purpose: str
    default: bool = False


PAGES: tuple[PageSpec, ...] = (
    PageSpec("views/home.py", "Home", ":material/home:", "What the app does and where to go next.", default=True),
    PageSpec("views/data.py", "Data", ":material/table_chart:",
             "Upload interactions, map columns, check the validation report and the statistics."),
    PageSpec("views/train.py", "Train", ":material/model_training:",
             "Train BERT4Rec, SASRec+, the text tower or a baseline with live progress, or load a saved model."),
    PageSpec("views/compare.py", "Compare", ":material/leaderboard:",
             "Leaderboard of runs on full-ranking metrics, and which users each model serves best."),
    PageSpec("views/recommend.py", "Recommend", ":material/recommend:",
             "Top-K for any user, what-if history edits, cold-start users, similar items and exports."),
    PageSpec("views/explain.py", "Explain", ":material/psychology:",
             "Why an item is recommended: SHAP over the history and attributes, a faithfulness check, a global view."),
    PageSpec("views/embeddings.py", "Embeddings", ":material/scatter_plot:",
             "Map item or user embeddings in 2-D/3-D (PCA, UMAP, t-SNE), how far to trust it, true neighbours."),
    PageSpec("views/blurbs.py", "Blurbs", ":material/edit_note:",
             "Short texts for a recommendation written by a language model from the facts, checked before shown."),
)
