"""Labels people read: counts in words, one distinct colour per genre or run, the same one on every chart."""

from __future__ import annotations

from views.ui.charts import MUTED, category_colours
from views.ui.common import plural


def test_counts_read_as_words() -> None:
    assert (plural(1, "item"), plural(0, "item"), plural(1214, "item")) == ("1 item", "0 items", "1,214 items")


def test_twelve_genres_and_a_catch_all_get_thirteen_distinct_colours_that_do_not_move() -> None:
    genres = ["Drama", "Comedy", "Action", "Thriller", "Horror", "Romance", "Crime", "Adventure", "Sci-Fi",
              "Animation", "Fantasy", "Mystery", "other"]
    colours = category_colours(genres)
    assert len(set(colours.values())) == 13 and colours["other"] == MUTED["other"]
    assert colours["Action"] != colours["Thriller"]  # the pair that used to share a blue
    assert category_colours(genres[:5]) == {g: colours[g] for g in genres[:5]}  # stable across charts
