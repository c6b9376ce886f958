"""Item text: what the language-model towers read for each item."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.data.item_text import history_text, item_texts, item_titles


def test_text_joins_title_year_genres_and_description():
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Alien", "Heat (1995)"], "year": [1979, 1995],
                          "genres": ["Horror|Sci-Fi", ""], "overview": ["In space no one can hear you scream.", ""]})
    assert item_texts(items) == ["Alien (1979). Genres: Horror, Sci-Fi. In space no one can hear you scream.",
                                 "Heat (1995)."]  # the year already in the title is not repeated


def test_missing_metadata_falls_back_to_the_id():
    items = pd.DataFrame({"item_id": ["tt42"], "year": [float("nan")]})
    assert item_titles(items) == ["item tt42"] and item_texts(items) == ["item tt42."]


def test_history_text_is_newest_first_and_capped():
    titles = ["A", "B", "C", "D"]
    assert history_text(titles, np.array([0, 1, 2, 3]), 3) == "D; C; B"
    assert history_text(titles, np.array([], dtype=np.int64), 3) == ""
