"""Page tests with Streamlit's AppTest: what a user sees on Home and Data, switching datasets,
uploading good and bad files, and deleting a dataset. Every test uses its own temporary workspace.

Uploads go through AppTest's file_uploader (real bytes through the page's widgets); the browser
test (`test_e2e_browser.py`) covers the same path through a real Chromium.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401  (autouse fixture)
from streamlit.testing.v1 import AppTest

from recsys_core.data.dataset import build_dataset
from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.workspace.registry import Workspace
from tests.own_data import as_tsv, listening_log


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


@pytest.fixture(scope="module")
def demo_stats() -> dict:
    return load_demo().stats()


def _plain(text: str) -> str:
    """Markdown as a user reads it (the pages backslash-escape user text)."""
    return re.sub(r"\\(.)", r"\1", text.replace("**", ""))


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [s.value for s in at.subheader] + [c.value for c in at.caption]
    return _plain("\n".join(parts))


def _successes(at: AppTest) -> str:
    return _plain("\n".join(e.value for e in at.success))


def _errors(at: AppTest) -> str:
    return _plain("\n".join(e.value for e in at.error))


def _tiny_csv(n_users: int = 12) -> tuple[bytes, int, int, int]:
    rows = [(f"user{u}", f"item{(u * 3 + j) % 17}", 1 + (u + j) % 5, 1_600_000_000 + 86_400 * (u + j))
            for u in range(n_users) for j in range(2 + u % 4)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return frame.to_csv(index=False).encode(), frame["user_id"].nunique(), frame["item_id"].nunique(), len(frame)


def _save_small(root: Path, name: str) -> dict:
    frame = pd.DataFrame({"user": np.repeat(["a", "b", "c"], 3), "item": list("xyzxyqxrs"),
                          "rating": np.arange(9, dtype=float), "timestamp": np.arange(9) * 1000})
    ds = build_dataset(frame, name=name)
    Workspace(root).save_dataset(ds, name=name, source_file="small.csv")
    return ds.stats()


def test_home_opens_on_demo_with_its_numbers(ws_root: Path, demo_stats: dict) -> None:
    at = open_app()
    assert DEMO_NAME in _texts(at)
    metrics = _metrics(at)
    assert metrics["Users"] == f"{demo_stats['users']:,}"
    assert metrics["Items"] == f"{demo_stats['items']:,}"
    assert metrics["Interactions"] == f"{demo_stats['interactions']:,}"
    assert at.sidebar.selectbox(key="sidebar_dataset").value == DEMO_NAME
    assert [r.name for r in Workspace(ws_root).list_datasets()] == [DEMO_NAME]


def test_data_page_shows_demo_statistics_and_charts(ws_root: Path, demo_stats: dict) -> None:
    at = open_app("views/data.py")
    assert f"Statistics: {DEMO_NAME}" in _texts(at)
    metrics = _metrics(at)
    assert metrics["Users"] == f"{demo_stats['users']:,}"
    assert metrics["Sparsity"] == f"{demo_stats['sparsity']:.2%}"
    # The demo has ratings and timestamps: both long tails, the ratings histogram and activity.
    assert len(at.get("plotly_chart")) == 4
    saved = at.dataframe[0].value  # no upload yet: the saved-datasets table is the only table
    assert saved["name"].tolist() == [DEMO_NAME]


def test_sidebar_switches_the_active_dataset_on_every_page(ws_root: Path) -> None:
    small = _save_small(ws_root, "small")
    at = open_app()
    at.sidebar.selectbox(key="sidebar_dataset").set_value("small").run()
    assert _metrics(at)["Users"] == str(small["users"])
    assert "small" in _texts(at)
    at.switch_page("views/data.py").run()
    assert "Statistics: small" in _texts(at)
    assert _metrics(at)["Interactions"] == str(small["interactions"])


def test_upload_csv_makes_it_the_active_dataset(ws_root: Path) -> None:
    data, n_users, n_items, n_rows = _tiny_csv()
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("my ratings.csv", data, "text/csv")).run()
    assert not at.exception, at.exception
    # Detected mapping is offered as editable defaults.
    assert at.selectbox(key="data_map_user").value == "user_id"
    assert at.selectbox(key="data_map_item").value == "item_id"
    assert at.selectbox(key="data_map_rating").value == "rating"
    assert at.selectbox(key="data_map_timestamp").value == "timestamp"
    assert at.text_input(key="data_name").value == "my_ratings"
    at.button(key="data_load").click().run()
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    assert "Loaded and saved my_ratings" in _successes(at)
    assert "42 rows" in _texts(at)  # the validation report says what was read
    assert at.sidebar.selectbox(key="sidebar_dataset").value == "my_ratings"
    metrics = _metrics(at)
    assert (metrics["Users"], metrics["Items"], metrics["Interactions"]) == (str(n_users), str(n_items), str(n_rows))
    saved = {r.name: r for r in Workspace(ws_root).list_datasets()}
    assert saved["my_ratings"].n_interactions == n_rows


def test_overriding_the_mapping_changes_what_is_loaded(ws_root: Path) -> None:
    data, *_ = _tiny_csv()
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("ratings.csv", data, "text/csv")).run()
    at.selectbox(key="data_map_rating").set_value("(none)").run()
    at.button(key="data_load").click().run()
    assert not at.error, _errors(at)
    # Without a rating column the dataset is implicit: no ratings chart, a note instead.
    assert len(at.get("plotly_chart")) == 3
    assert any("no ratings" in i.value for i in at.info)


def test_item_metadata_and_kcore_options_reach_the_dataset(ws_root: Path) -> None:
    data, *_ = _tiny_csv()
    titles = pd.DataFrame({"item_id": [f"item{i}" for i in range(17)], "title": [f"Film {i}" for i in range(17)]})
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("ratings.csv", data, "text/csv"))
    at.file_uploader(key="data_items_file").set_value(("items.csv", titles.to_csv(index=False).encode(), "text/csv"))
    at.run()
    at.number_input(key="data_min_user").set_value(4).run()
    at.button(key="data_load").click().run()
    assert not at.error, _errors(at)
    report = _texts(at)
    assert "k-core" in report and "item metadata" in report
    ds = Workspace(ws_root).load_dataset("ratings")
    assert np.diff(ds.indptr).min() >= 4  # users below the k-core minimum are gone
    assert ds.title(0).startswith("Film ")


def test_unreadable_upload_shows_error_and_saves_nothing(ws_root: Path) -> None:
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("broken.parquet", b"not parquet at all\n" * 10,
                                                 "application/octet-stream")).run()
    assert not at.exception, at.exception
    assert "broken.parquet" in _errors(at)
    assert "Traceback" not in _errors(at)
    assert all(b.key != "data_load" for b in at.button)  # an unreadable file offers nothing to load
    assert [r.name for r in Workspace(ws_root).list_datasets()] == [DEMO_NAME]


def test_user_text_in_messages_is_escaped(ws_root: Path) -> None:
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("*x*<b>.parquet", b"junk" * 50, "application/octet-stream")).run()
    raw = "\n".join(e.value for e in at.error)
    assert "\\*x\\*\\<b\\>" in raw  # shown literally: no emphasis, no HTML tag


def test_invalid_load_shows_hint_and_leaves_workspace_unchanged(ws_root: Path) -> None:
    data, *_ = _tiny_csv()
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("ratings.csv", data, "text/csv")).run()
    at.selectbox(key="data_map_item").set_value("user_id").run()  # user and item are the same column
    at.button(key="data_load").click().run()
    assert not at.exception, at.exception
    text = _errors(at)
    assert "Nothing was loaded" in text and "What to do" in text
    assert [r.name for r in Workspace(ws_root).list_datasets()] == [DEMO_NAME]
    assert at.sidebar.selectbox(key="sidebar_dataset").value == DEMO_NAME


def test_delete_asks_for_confirmation_and_demo_cannot_be_deleted(ws_root: Path) -> None:
    _save_small(ws_root, "small")
    at = open_app("views/data.py")
    assert at.button(key="data_delete").disabled  # the demo is picked by default
    at.selectbox(key="data_saved_pick").set_value("small").run()
    at.button(key="data_make_active").click().run()
    assert at.sidebar.selectbox(key="sidebar_dataset").value == "small"
    at.button(key="data_delete").click().run()
    assert {r.name for r in Workspace(ws_root).list_datasets()} == {DEMO_NAME, "small"}  # not yet
    at.button(key="data_delete_confirm").click().run()
    assert not at.exception, at.exception
    assert [r.name for r in Workspace(ws_root).list_datasets()] == [DEMO_NAME]
    # The deleted dataset was active: the app falls back to the demo.
    assert at.sidebar.selectbox(key="sidebar_dataset").value == DEMO_NAME


def test_a_play_count_log_without_timestamps_is_read_as_counts_and_said_to_be_unordered(ws_root: Path) -> None:
    at = open_app("views/data.py")
    at.file_uploader(key="data_file").set_value(("plays.tsv", as_tsv(listening_log(200, 120)), "text/plain")).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="data_map_count").value == 2 and at.selectbox(key="data_map_rating").value == "(none)"
    assert "read as a count, not a rating" in " ".join(c.value for c in at.caption)
    assert at.dataframe[0].value.columns.tolist() == ["column 1", "column 2", "column 3"]  # the preview
    at.button(key="data_load").click().run()
    assert not at.error, _errors(at)
    report = _texts(at)
    assert "order of each user's interactions is unknown" in report and "random interaction per user" in report
    assert "read as a count, not a rating" in " ".join(m.value for m in at.markdown)  # in the report too
    assert any("no declared order" in i.value for i in at.info)  # no activity chart, and why
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Counts (plays, clicks)" in spec for spec in titles)
