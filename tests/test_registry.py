"""The workspace: datasets and runs survive restarts, writes are all-or-nothing, names are safe."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.demo import DEMO_NAME
from recsys_core.errors import ConfigError, DataError
from recsys_core.workspace.registry import Workspace, safe_name, validate_name


def make_dataset(name: str = "toy", n_users: int = 3) -> Dataset:
    frame = pd.DataFrame({
        "user": [f"u{u}" for u in range(n_users) for _ in range(2)],
        "item": ["0000123", "0114709"] * n_users,
        "rating": [5.0, 3.5] * n_users,
        "timestamp": list(range(2 * n_users)),
    })
    items = pd.DataFrame({"item_id": ["0000123", "0114709"], "title": ["Old film", "Toy Story"],
                          "genres": ["Drama", "Animation|Comedy"]})
    return build_dataset(frame, name=name, items=items, source="toy.csv")


class SaveFails(Dataset):
    """A dataset whose write dies half-way, like a full disk."""

    def save(self, directory):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "interactions.parquet").write_bytes(b"partial")
        raise OSError("No space left on device")


def failing_copy(ds: Dataset) -> SaveFails:
    return SaveFails(ds.name, ds.interactions, ds.user_ids, ds.item_ids, ds.items, ds.source, ds.options)


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def test_save_list_load_roundtrip(ws):
    ds = make_dataset()
    record = ws.save_dataset(ds, "toy", source_file="toy.csv")
    assert (record.name, record.source_file, record.n_users, record.n_items, record.n_interactions) == (
        "toy", "toy.csv", 3, 2, 6)
    assert [r.name for r in ws.list_datasets()] == ["toy"]
    back = ws.load_dataset("toy")
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert list(back.item_ids) == ["0000123", "0114709"]  # leading zeros survive
    assert back.title(1) == "Toy Story"
    assert back.name == "toy"


def test_list_is_newest_first_and_resave_moves_to_top(ws):
    for name in ("a", "b", "c"):
        ws.save_dataset(make_dataset(), name)
    assert [r.name for r in ws.list_datasets()] == ["c", "b", "a"]
    ws.save_dataset(make_dataset(), "a", overwrite=True)
    assert [r.name for r in ws.list_datasets()] == ["a", "c", "b"]


def test_default_name_comes_from_the_dataset(ws):
    record = ws.save_dataset(make_dataset(name="my ratings.csv"))
    assert record.name == "my_ratings"
    assert ws.load_dataset("my_ratings").n_users == 3


def test_reopening_the_folder_shows_saved_datasets_and_runs(tmp_path):
    first = Workspace(tmp_path / "ws")
    first.save_dataset(make_dataset(), "toy")
    run_id = first.record_run("toy", "popularity", {"k": 1}, {"ndcg@10": 0.1}, "cpu", 0.5, None)
    second = Workspace(tmp_path / "ws")
    assert [r.name for r in second.list_datasets()] == ["toy"]
    assert second.load_dataset("toy").n_interactions == 6
    assert second.get_run(run_id).metrics == {"ndcg@10": 0.1}


def test_workspace_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_WORKSPACE", str(tmp_path / "from-env"))
    ws = Workspace()
    assert ws.root == (tmp_path / "from-env").resolve()
    assert (ws.root / "workspace.db").is_file()


def test_database_uses_wal(ws):
    conn = sqlite3.connect(ws.root / "workspace.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_overwrite_replaces_and_leaves_one_version(ws):
    ws.save_dataset(make_dataset(n_users=3), "toy")
    ws.save_dataset(make_dataset(n_users=5), "toy", overwrite=True)
    assert ws.load_dataset("toy").n_users == 5
    assert [r.n_users for r in ws.list_datasets()] == [5]
    assert len(list((ws.root / "datasets" / "toy").iterdir())) == 1


def test_failed_overwrite_keeps_previous_dataset(ws):
    before = ws.save_dataset(make_dataset(n_users=3), "toy")
    with pytest.raises(OSError, match="No space left"):
        ws.save_dataset(failing_copy(make_dataset(n_users=5)), "toy", overwrite=True)
    assert ws.list_datasets() == [before]
    assert ws.load_dataset("toy").n_users == 3
    assert list((ws.root / ".tmp").iterdir()) == []
    assert list((ws.root / "datasets" / "toy").iterdir()) == [before.path]


def test_failed_first_save_leaves_nothing(ws):
    with pytest.raises(OSError):
        ws.save_dataset(failing_copy(make_dataset()), "toy")
    assert ws.list_datasets() == []
    assert not (ws.root / "datasets" / "toy").exists()
    assert list((ws.root / ".tmp").iterdir()) == []


def test_failed_database_write_removes_new_files_and_keeps_old(ws):
    before = ws.save_dataset(make_dataset(n_users=3), "toy")
    conn = sqlite3.connect(ws.root / "workspace.db")
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON datasets BEGIN SELECT RAISE(ABORT, 'db refused'); END")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="db refused"):
        ws.save_dataset(make_dataset(n_users=5), "toy", overwrite=True)
    assert ws.list_datasets() == [before]
    assert ws.load_dataset("toy").n_users == 3
    assert list((ws.root / "datasets" / "toy").iterdir()) == [before.path]


@pytest.mark.parametrize("bad", ["../evil", "a/b", "a\\b", "", ".hidden", "a..b", "x" * 65, "sp ace", "-x", "é"])
def test_unsafe_names_are_refused(ws, bad):
    with pytest.raises(ConfigError, match="invalid dataset name"):
        ws.save_dataset(make_dataset(), bad)
    assert list((ws.root / "datasets").iterdir()) == []


@pytest.mark.parametrize("good", ["ml-100k", "demo_v2.1", "A", "x" * 64])
def test_safe_names_are_accepted(good):
    assert validate_name(good) == good


@given(st.text(max_size=100))
def test_safe_name_always_gives_a_valid_name(text):
    assert validate_name(safe_name(text))


def test_load_unknown_name_says_what_exists(ws):
    ws.save_dataset(make_dataset(), "toy")
    with pytest.raises(ConfigError, match="no dataset named 'nope'") as err:
        ws.load_dataset("nope")
    assert "toy" in err.value.hint


def test_load_with_files_gone_is_a_clear_error(ws):
    record = ws.save_dataset(make_dataset(), "toy")
    for f in record.path.iterdir():
        f.unlink()
    with pytest.raises(DataError, match="missing"):
        ws.load_dataset("toy")


def test_delete_dataset(ws):
    ws.save_dataset(make_dataset(), "toy")
    ws.save_dataset(make_dataset(), "keep")
    assert ws.delete_dataset("toy") is True
    assert [r.name for r in ws.list_datasets()] == ["keep"]
    assert not (ws.root / "datasets" / "toy").exists()
    with pytest.raises(ConfigError):
        ws.load_dataset("toy")
    assert ws.delete_dataset("toy") is False


def test_ensure_demo_saves_once_and_is_idempotent(ws):
    first = ws.ensure_demo()
    second = ws.ensure_demo()
    assert first == second
    assert [r.name for r in ws.list_datasets()] == [DEMO_NAME]
    demo = ws.load_dataset(DEMO_NAME)
    assert demo.n_users == first.n_users > 1000
    assert "title" in demo.items.columns


def test_ensure_demo_repairs_missing_files(ws):
    first = ws.ensure_demo()
    for f in first.path.iterdir():
        f.unlink()
    again = ws.ensure_demo()
    assert again.path != first.path
    assert ws.load_dataset(DEMO_NAME).n_interactions == first.n_interactions


def test_ensure_demo_replaces_a_copy_saved_from_older_demo_files(ws):
    # An older app version saved its own demo (other files, the old unversioned source line).
    old = build_dataset(pd.DataFrame({"user": [1, 1, 2], "item": [10, 11, 10]}), name=DEMO_NAME)
    ws.save_dataset(old, name=DEMO_NAME, source_file="MovieTweetings snapshot-100K, 5-core")
    record = ws.ensure_demo()
    assert record.n_users > 1000 and "[files " in record.source_file
    assert ws.load_dataset(DEMO_NAME).n_interactions == record.n_interactions
    assert ws.ensure_demo() == record  # up to date now: no second save


def test_runs_crud(ws):
    art = ws.models_dir() / "run-a"
    art.mkdir()
    (art / "model.safetensors").write_bytes(b"x")
    config, metrics = {"epochs": 3, "lr": 1e-3, "layers": [64, 64]}, {"ndcg@10": 0.25, "hr@10": 0.4}
    a = ws.record_run("toy", "bert4rec", config, metrics, "cuda", 12.5, art, status="running")
    b = ws.record_run("other", "ease", {}, {}, "cpu", 0.1, None)
    run = ws.get_run(a)
    assert (run.dataset, run.model, run.config, run.metrics, run.device, run.wall_s) == (
        "toy", "bert4rec", config, metrics, "cuda", 12.5)
    assert (run.split, run.status, run.artifact_dir) == ("leave_one_out", "running", art.resolve())
    assert [r.id for r in ws.list_runs()] == [b, a]
    assert [r.id for r in ws.list_runs(dataset="toy")] == [a]

    updated = ws.update_run(a, status="finished", metrics={"ndcg@10": 0.3})
    assert (updated.status, updated.metrics) == ("finished", {"ndcg@10": 0.3})
    assert ws.get_run(a).config == config
    with pytest.raises(ValueError, match="unknown field"):
        ws.update_run(a, id=7)
    with pytest.raises(ConfigError):
        ws.update_run(999, status="failed")

    assert ws.delete_run(a) is True
    assert not art.exists()
    with pytest.raises(ConfigError, match="no run with id"):
        ws.get_run(a)
    assert ws.delete_run(a) is False
    assert [r.id for r in ws.list_runs()] == [b]


def test_delete_run_never_touches_folders_outside_models(ws, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    run_id = ws.record_run("toy", "ease", {}, {}, "cpu", 1.0, outside)
    ws.delete_run(run_id)
    assert outside.is_dir()
    ws.save_dataset(make_dataset(), "toy")
    run_id = ws.record_run("toy", "ease", {}, {}, "cpu", 1.0, ws.root / "datasets")
    ws.delete_run(run_id)
    assert ws.load_dataset("toy").n_users == 3


def test_concurrent_sessions_write_and_read_without_errors(ws):
    ws.save_dataset(make_dataset(n_users=3), "shared")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            mine = Workspace(ws.root)  # each Streamlit session may hold its own Workspace
            for j in range(5):
                mine.record_run("shared", f"m{i}", {"j": j}, {}, "cpu", 0.0, None)
                mine.save_dataset(make_dataset(n_users=3 + i), "shared", overwrite=True)
                assert mine.load_dataset("shared").n_users in range(3, 7)
        except Exception as err:  # noqa: BLE001  surfaced in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ws.list_runs("shared")) == 20
    assert len(list((ws.root / "datasets" / "shared").iterdir())) == 1


def test_a_taken_name_is_refused_unless_replacing_is_asked_for(ws):
    first = ws.save_dataset(make_dataset(n_users=3), "team")
    with pytest.raises(ConfigError, match="a dataset named 'team' already exists") as err:
        ws.save_dataset(make_dataset(n_users=5), "team")
    assert "replace" in err.value.hint
    assert ws.list_datasets() == [first] and ws.load_dataset("team").n_users == 3
    assert list((ws.root / ".tmp").iterdir()) == []


def test_two_sessions_saving_one_new_name_at_once_get_one_success_and_one_clear_refusal(ws):
    results: list[object] = []
    barrier = threading.Barrier(2)

    def save(n_users: int) -> None:
        barrier.wait()
        try:
            results.append(Workspace(ws.root).save_dataset(make_dataset(n_users=n_users), "race"))
        except ConfigError as err:
            results.append(err)

    threads = [threading.Thread(target=save, args=(n,)) for n in (3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = [r for r in results if not isinstance(r, ConfigError)]
    assert len(saved) == 1 and len(results) == 2
    assert ws.load_dataset("race").n_users == saved[0].n_users
    assert len(list((ws.root / "datasets" / "race").iterdir())) == 1  # the loser's files are gone
