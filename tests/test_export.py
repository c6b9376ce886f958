"""Exports: every user's top-K equals the one-user engine, CSV cannot smuggle spreadsheet formulas,
and both formats read back to the same table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from movie_fixtures import movie_dataset

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.errors import ConfigError
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.recommend.export import (
    export_bytes,
    neutralise_formulas,
    read_export,
    recommendations_for_users,
    to_csv_bytes,
    write_export,
)
from recsys_core.recommend.topk import recommend

EVIL = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1)", "\tTab", "\rCR"]


@pytest.fixture(scope="module")
def ds() -> Dataset:
    """The tiny movie set with the first titles replaced by formula-looking text."""
    base = movie_dataset(n_users=30, per_user=8)
    items = base.items.copy()
    items.loc[: len(EVIL) - 1, "title"] = EVIL
    frame = base.interactions.assign(user=base.user_ids[base.interactions["user"]],
                                     item=base.item_ids[base.interactions["item"]])
    return build_dataset(frame, name="evil-titles", items=items)


@pytest.fixture(scope="module")
def model(ds: Dataset) -> EASE:
    return EASE(EASEConfig(l2=2.0)).fit(ds)


def test_all_users_export_equals_the_one_user_engine(ds: Dataset, model: EASE) -> None:
    table = recommendations_for_users(model, ds, k=5, batch_size=7)
    assert len(table) == 5 * ds.n_users
    for user in (0, 7, ds.n_users - 1):
        mine = table[table["user_id"] == ds.user_ids[user]]
        single = recommend(model, ds.history(user), 5, items=ds.items)
        assert mine["item_id"].tolist() == single["item_id"].tolist()
        assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
        assert mine["score"].to_numpy() == pytest.approx(single["score"].to_numpy())
        assert mine["title"].tolist() == single["title"].tolist()
    seen = set(zip(ds.user_ids[ds.interactions["user"]], ds.item_ids[ds.interactions["item"]], strict=True))
    assert not seen & set(zip(table["user_id"], table["item_id"], strict=True))


def test_csv_neutralises_formulas_in_text_cells_only() -> None:
    frame = pd.DataFrame({"title": EVIL + ["Plain", "a=b", "-"], "score": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, -7.0, 8.0, 9.0],
                          "rank": np.arange(1, 10)})
    safe = neutralise_formulas(frame)
    assert safe["title"].tolist()[: len(EVIL)] == ["'" + t for t in EVIL]
    assert safe["title"].tolist()[len(EVIL):] == ["Plain", "a=b", "'-"]
    assert safe["score"].tolist() == frame["score"].tolist()  # negative numbers stay numbers
    back = pd.read_csv(io.BytesIO(to_csv_bytes(frame)), encoding="utf-8-sig")
    assert back["score"].dtype == np.float64 and back["score"].tolist() == frame["score"].tolist()
    assert back["rank"].dtype == np.int64
    assert back["title"].tolist()[0] == "'" + EVIL[0]
    assert not any(str(t).startswith(("=", "+", "-", "@")) for t in back["title"])
    assert frame["title"].tolist()[0] == EVIL[0]  # the input is not modified


def test_export_round_trip_csv_and_parquet(ds: Dataset, model: EASE, tmp_path: Path) -> None:
    table = recommendations_for_users(model, ds, k=4, users=[0, 1, 2, 3, 4, 5])
    evil_row = pd.DataFrame({"user_id": ["x"], "rank": [1], "item_id": ["007"], "title": [EVIL[0]],
                             "score": [-0.5], "fallback": [False]})
    table = pd.concat([table, evil_row], ignore_index=True)
    parquet = read_export(write_export(table, tmp_path / "recs.parquet"))
    pd.testing.assert_frame_equal(parquet, table.astype({"user_id": str, "item_id": str, "title": str}),
                                  check_dtype=False)
    csv = read_export(write_export(table, tmp_path / "recs.csv"))
    assert csv["item_id"].tolist() == table["item_id"].tolist()  # leading zeros kept
    assert csv["title"].str.removeprefix("'").tolist() == table["title"].tolist()
    assert csv["title"].iat[-1] == "'" + EVIL[0]
    assert csv["score"].to_numpy() == pytest.approx(table["score"].to_numpy())
    assert csv["fallback"].dtype == bool
    with pytest.raises(ConfigError, match="unknown export format"):
        write_export(table, tmp_path / "recs.xlsx")
    assert export_bytes(table, "csv").startswith("\ufeff".encode())


def test_one_users_export_has_the_columns_of_the_all_users_export(ds: Dataset, model: EASE) -> None:
    from recsys_core.recommend.export import EXPORT_COLUMNS, export_table
    from recsys_core.recommend.topk import recommend

    everyone = recommendations_for_users(model, ds, 5, users=[0])
    one = export_table(recommend(model, ds.history(0), k=5, items=ds.items, popularity=ds.item_popularity),
                       ds.user_ids[0])
    assert tuple(everyone.columns) == tuple(one.columns) == EXPORT_COLUMNS
    pd.testing.assert_frame_equal(one.reset_index(drop=True), everyone.reset_index(drop=True), check_dtype=False)


def test_the_all_users_export_runs_as_a_workspace_job_and_stores_its_table(ds: Dataset, model: EASE,
                                                                          tmp_path: Path) -> None:
    from recsys_core.background import WorkspaceJob
    from recsys_core.recommend.export import export_work
    from recsys_core.workspace.jobs import JobStore
    from recsys_core.workspace.registry import Workspace

    store = JobStore(Workspace(tmp_path / "ws"))
    job = WorkspaceJob.start(store, "export", ds.name, export_work(model, ds, 5), params={"k": 5})
    assert job.join(60) and job.record().status == "finished"
    record = job.record()
    assert record.message == f"scored {ds.n_users:,} of {ds.n_users:,} users" and record.total == ds.n_users
    stored = JobStore(Workspace(tmp_path / "ws")).load_result(job.id)["table"]
    pd.testing.assert_frame_equal(stored, recommendations_for_users(model, ds, 5), check_dtype=False)


def test_a_cancelled_export_stops_after_the_batch_and_stores_nothing(ds: Dataset, model: EASE) -> None:
    from recsys_core.progress import Progress
    from recsys_core.recommend.export import export_work

    seen, holder = [], []
    outer = Progress(callback=lambda e: (seen.append(e.step), holder[0].cancel()))
    holder.append(outer)
    assert export_work(model, ds, 5)(outer) is None
    assert len(seen) == 1  # batch_size=1024 > users here: one batch, then it stops
