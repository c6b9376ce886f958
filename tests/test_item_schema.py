"""The item schema: metadata is mapped once at ingest, and labels and item text read only the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.item_schema import SCHEMA, history_text, item_labels, item_texts, item_titles, normalise_items
from recsys_core.data.items import read_items


def test_text_joins_title_year_genres_and_description():
    items = normalise_items(pd.DataFrame({
        "item_id": ["1", "2"], "title": ["Alien", "Heat (1995)"], "year": [1979, 1995],
        "genres": ["Horror|Sci-Fi", ""], "overview": ["In space no one can hear you scream.", ""]}))
    assert item_texts(items) == ["Alien (1979). Genres: Horror, Sci-Fi. In space no one can hear you scream.",
                                 "Heat (1995)."]  # the year already in the title is not repeated


def test_missing_metadata_falls_back_to_the_id():
    items = normalise_items(pd.DataFrame({"item_id": ["tt42"], "year": [float("nan")]}))
    assert item_titles(items) == ["item tt42"] and item_texts(items) == ["item tt42."]


def test_history_text_is_newest_first_and_capped():
    titles = ["A", "B", "C", "D"]
    assert history_text(titles, np.array([0, 1, 2, 3]), 3) == "D; C; B"
    assert history_text(titles, np.array([], dtype=np.int64), 3) == ""


def test_other_spellings_land_in_the_schema_columns_and_the_rest_is_kept():
    raw = pd.DataFrame({"item_id": ["b1", "b2"], "Book Title": ["  Dune ", "Emma"], "Category": ["SF | Classic", None],
                        "original_publication_year": [1965.0, float("nan")], "Author": ["Herbert", "Austen"],
                        "Description": ["Spice.", ""], "isbn": ["0441013597", "0141439587"]})
    items = normalise_items(raw)
    assert list(items.columns[:len(SCHEMA)]) == list(SCHEMA)
    assert items["title"].tolist() == ["Dune", "Emma"]
    assert items["genres"].tolist() == ["SF|Classic", ""]
    assert items["year"].tolist()[0] == 1965 and pd.isna(items["year"].tolist()[1])
    assert items["text"].tolist() == ["Spice.", ""] and items["authors"].tolist() == ["Herbert", "Austen"]
    assert items["isbn"].tolist() == ["0441013597", "0141439587"]
    assert item_texts(items)[0] == "Dune (1965). Genres: SF, Classic. Authors: Herbert. Spice."
    assert normalise_items(items).equals(items)  # idempotent: a saved dataset loads unchanged


def test_years_are_read_from_titles_only_when_most_titles_carry_one():
    most = normalise_items(pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["A (1999)", "B (2001)", "C"]}))
    assert most["year"].tolist()[:2] == [1999, 2001] and pd.isna(most["year"].iat[2])
    few = normalise_items(pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["Blade Runner (1982)", "B", "C"]}))
    assert few["year"].isna().all()


def test_a_metadata_file_and_the_dataset_agree_on_every_label(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("movieId,Name,Genre,release_year\n10,Heat,Crime|Drama,1995\n20,Alien,Horror,1979\n")
    meta = read_items(path)
    frame = pd.DataFrame({"user": ["u1", "u1", "u2"], "item": ["10", "20", "30"], "timestamp": [1, 2, 3]})
    ds = build_dataset(frame, name="d", items=meta)
    assert ds.labels.tolist() == ["Heat (1995)", "Alien (1979)", "item 30"]
    assert ds.items["genres"].tolist() == ["Crime|Drama", "Horror", ""]
    ds.save(tmp_path / "saved")
    assert Dataset.load(tmp_path / "saved").labels.tolist() == ds.labels.tolist()


def test_two_items_with_one_title_get_labels_a_picker_can_tell_apart():
    # ML-100k lists 18 films under two ids each ("Hugo Pool (1997)" twice): a picker offering two identical
    # entries would make one of them unreachable.
    items = normalise_items(pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["Hugo Pool", "Hugo Pool", "Heat"],
                                          "year": [1997, 1997, 1995]}))
    assert item_labels(items) == ["Hugo Pool (1997) · id 1", "Hugo Pool (1997) · id 2", "Heat (1995)"]
    assert item_titles(items)[:2] == ["Hugo Pool (1997)"] * 2  # what a language model reads stays the title
    frame = pd.DataFrame({"user": ["u1", "u1", "u2"], "item": ["1", "2", "3"], "timestamp": [1, 2, 3]})
    assert build_dataset(frame, name="d", items=items).labels.tolist() == item_labels(items)
