"""Dataset / build_dataset: id maps, time order, CSR sequences, stats, Parquet round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import DataError, Dataset, build_dataset
from recsys_core.data.dataset import FORMAT_VERSION


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user": ["b", "a", "b", "a", "a", "c"],
        "item": ["007", "10", "10", "2", "007", "2"],
        "rating": [5, 4, 3, 2, 1, 4],
        "timestamp": [20, 30, 10, 30, 5, 1],
    })


def test_ids_are_contiguous_and_round_trip() -> None:
    ds = build_dataset(_frame(), name="t")
    assert list(ds.user_ids) == ["a", "b", "c"]
    assert list(ds.item_ids) == ["007", "10", "2"]  # string ids keep leading zeros
    assert ds.interactions["user"].dtype == np.int32 and ds.interactions["item"].dtype == np.int32
    assert set(ds.interactions["user"]) == {0, 1, 2} and set(ds.interactions["item"]) == {0, 1, 2}
    assert all(ds.user_index[u] == k for k, u in enumerate(ds.user_ids))
    assert all(ds.item_index[i] == k for k, i in enumerate(ds.item_ids))


def test_sequences_are_time_ordered_with_stable_ties() -> None:
    ds = build_dataset(_frame(), name="t")
    names = [[ds.item_ids[i] for i in seq] for seq in ds.sequences()]
    # a: 007@5, then 10@30 and 2@30 tie -> file order (10 before 2)
    assert names == [["007", "10", "2"], ["10", "007"], ["2"]]
    assert ds.indptr.tolist() == [0, 3, 5, 6]
    assert ds.history(1).tolist() == [ds.item_index["10"], ds.item_index["007"]]
    ts = ds.interactions["timestamp"].to_numpy()
    for u in range(ds.n_users):
        assert np.all(np.diff(ts[ds.indptr[u]:ds.indptr[u + 1]]) >= 0)


def test_no_timestamps_uses_file_order() -> None:
    ds = build_dataset(_frame().drop(columns=["timestamp", "rating"]), name="t")
    assert [ds.item_ids[i] for i in ds.history(ds.user_index["a"])] == ["10", "2", "007"]
    assert not ds.has_ratings and ds.interactions["rating"].isna().all()
    assert ds.stats()["has_timestamps"] is False


def test_stats_are_consistent() -> None:
    ds = build_dataset(_frame(), name="t")
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (3, 3, 6)
    assert s["density"] == pytest.approx(6 / 9) and s["sparsity"] == pytest.approx(3 / 9)
    assert (s["per_user_min"], s["per_user_max"]) == (1, 3)
    assert ds.item_popularity.tolist() == [2, 2, 2] and ds.item_popularity.sum() == s["interactions"]
    assert (s["rating_min"], s["rating_max"]) == (1.0, 5.0)
    assert (s["time_min"], s["time_max"]) == (1, 30)


def test_metadata_aligned_to_item_index() -> None:
    meta = pd.DataFrame({"item_id": ["2", "007", "999"], "title": ["Two", "Bond", "Unused"]})
    ds = build_dataset(_frame(), name="t", items=meta)
    assert ds.items["item_id"].tolist() == list(ds.item_ids)
    assert ds.items["title"].tolist() == ["Bond", "", "Two"]
    assert ds.title(ds.item_index["10"]) == "10"  # falls back to the id


def test_save_load_round_trip(tmp_path) -> None:
    meta = pd.DataFrame({"item_id": ["2", "007"], "title": ["Two", "Bond"], "genres": ["A|B", ""]})
    ds = build_dataset(_frame(), name="tiny", items=meta, source="x.csv", options={"k": 1})
    back = Dataset.load(ds.save(tmp_path / "ds"))
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    pd.testing.assert_frame_equal(back.items, ds.items)
    assert list(back.user_ids) == list(ds.user_ids) and list(back.item_ids) == ["007", "10", "2"]
    assert (back.name, back.source, back.options["k"]) == ("tiny", "x.csv", 1)
    assert back.stats() == ds.stats()
    assert [s.tolist() for s in back.sequences()] == [s.tolist() for s in ds.sequences()]


def test_load_of_broken_folder_is_a_data_error(tmp_path) -> None:
    with pytest.raises(DataError, match="unreadable"):
        Dataset.load(tmp_path)


def _saved_meta(tmp_path, **edit) -> Path:
    folder = build_dataset(_frame(), name="tiny", options={"k": 1}).save(tmp_path / "ds")
    meta = json.loads((folder / "dataset.json").read_text())
    meta.update(edit)
    meta = {k: v for k, v in meta.items() if v is not None}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_a_saved_dataset_records_the_format_version(tmp_path) -> None:
    folder = build_dataset(_frame(), name="tiny").save(tmp_path / "ds")
    assert json.loads((folder / "dataset.json").read_text())["format_version"] == FORMAT_VERSION


def test_a_dataset_saved_without_a_format_version_loads_as_version_0(tmp_path) -> None:
    back = Dataset.load(_saved_meta(tmp_path, format_version=None))
    ds = build_dataset(_frame(), name="tiny", options={"k": 1})
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert (back.name, back.options["k"], back.order) == ("tiny", 1, ds.order)


def test_a_dataset_from_a_newer_version_is_refused_with_what_to_do(tmp_path) -> None:
    with pytest.raises(DataError, match="newer version") as caught:
        Dataset.load(_saved_meta(tmp_path, format_version=99))
    assert "upgrade" in caught.value.hint and caught.value.file.endswith("dataset.json")


@pytest.mark.parametrize("version", ["1", 1.5, -1, True, [1]])
def test_a_garbled_format_version_is_a_data_error_naming_the_file(tmp_path, version) -> None:
    with pytest.raises(DataError, match="format_version") as caught:
        Dataset.load(_saved_meta(tmp_path, format_version=version))
    assert caught.value.file.endswith("dataset.json") and caught.value.hint


@pytest.mark.parametrize("meta", ["[1, 2]", '{"format_version": 1}', "{not json"])
def test_a_damaged_dataset_json_is_a_data_error(tmp_path, meta) -> None:
    folder = _saved_meta(tmp_path)
    (folder / "dataset.json").write_text(meta)
    with pytest.raises(DataError) as caught:
        Dataset.load(folder)
    assert caught.value.hint
