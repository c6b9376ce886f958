"""Issue 24: an upload's whole ingest runs in the limited child, so the server's memory stays bounded;
hostile zips and model zips are refused from their directories; leftovers are swept on a timer; and the
errors that used to mislead name the real problem. Every input is generated here, at small sizes that still
prove the mechanism (the issue's full-size figures are in the commit messages and the report)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_core.data import load_dataset, read_table
from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ConfigError, DataError, ModelError, ResourceError
from recsys_core.models.popularity import Popularity
from recsys_core.workspace.artifacts import MAX_ITEMS, import_model_zip
from recsys_core.workspace.ingest import PREVIEW_ROWS, ingest_upload, preview_upload
from recsys_core.workspace.registry import Workspace, start_sweeper

ROOT = Path(__file__).resolve().parents[1]
SERVER_GROWTH_MB = 80  # the stated bound: what the server process may grow by while it ingests these uploads


def _zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ---- the server's memory: a subprocess plays the server and reports its own peak ----------------------

_SERVER = r"""
import io, json, resource, sys, time, zipfile
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from recsys_core.errors import RecsysError
from recsys_core.workspace.ingest import ingest_upload, preview_upload
from recsys_core.workspace.registry import Workspace

def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()

n = 200_000  # 200k rows of two 4 KB ids: 0.8 GB as one Python string per row, ~15 KB as Parquet
user = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 2, pa.int32()), pa.array(["u" * 4000, "v" * 4000]))
item = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 7, pa.int32()), pa.array([f"i{k}" for k in range(7)]))
buf = io.BytesIO(); pq.write_table(pa.table({"user": user, "item": item}), buf)
rng = np.random.default_rng(0)
rows = 200_000  # a zip of one member of 200k valid rows (2.6 MB of text, ratio ~3)
text = "user,item,rating\n" + "\n".join(map(",".join, zip(rng.integers(0, 20_000, rows).astype(str),
                                                        rng.integers(0, 5_000, rows).astype(str),
                                                        rng.integers(1, 6, rows).astype(str)))) + "\n"
cases = {"dictionary.parquet": buf.getvalue(), "rows.zip": zipped({"ratings.csv": text.encode()}),
         "empty-members.zip": zipped({f"m{k}.csv": b"" for k in range(100_000)}),
         "one-mib-members.zip": zipped({f"ratings{k}.csv": b"1,2\n" * (1 << 18) for k in range(200)})}
del text, buf, user, item
ws = Workspace(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, data in cases.items():
    start = time.perf_counter()
    try:
        found = preview_upload(data, name)
        record, report = ingest_upload(ws, data, name, mapping=found.mapping, name=name.split(".")[0])
        result = {"ok": record.n_interactions, "preview_rows": len(found.raw.frame), "n_rows": found.raw.n_rows}
    except RecsysError as err:
        result = {"error": type(err).__name__, "message": err.message}
    result["s"] = round(time.perf_counter() - start, 2)
    out[name] = result
out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
out["child_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_hostile_uploads_leave_the_server_process_bounded(tmp_path: Path) -> None:
    env = {**os.environ, "RECSYS_INGEST_MEMORY_MB": "1024", "PYTHONPATH": str(ROOT)}
    env.pop("RECSYS_PARSE_MEMORY_MB", None)
    done = subprocess.run([sys.executable, "-c", _SERVER, str(tmp_path / "ws")], capture_output=True, text=True,
                          env=env, timeout=240, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The work happened in children (parsing 200k rows and validating them costs more than the bound there) ...
    assert out["child_peak_mb"] > SERVER_GROWTH_MB, out
    # ... and the server grew by less than the bound, whatever each upload was.
    assert out["growth_mb"] < SERVER_GROWTH_MB, out
    assert out["dictionary.parquet"]["ok"] == 14  # 2 users x 7 items, deduplicated in the child
    assert out["rows.zip"]["n_rows"] == 200_000 and out["rows.zip"]["preview_rows"] == PREVIEW_ROWS
    assert out["rows.zip"]["ok"] > 150_000
    assert out["empty-members.zip"]["error"] == "ResourceError" and "100,000 members" in out["empty-members.zip"]["message"]
    assert out["empty-members.zip"]["s"] < 2
    assert out["one-mib-members.zip"]["error"] == "ResourceError" and "expands" in out["one-mib-members.zip"]["message"]


def test_the_ingest_child_limits_derive_from_one_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.data import isolated

    monkeypatch.delenv("RECSYS_MAX_ROWS", raising=False)
    monkeypatch.delenv("RECSYS_MAX_READ_MB", raising=False)
    monkeypatch.setenv("RECSYS_INGEST_MEMORY_MB", "2")  # 10,000 rows, 1 MB unpacked, 4 zip members
    assert (isolated.max_rows(), isolated.max_read_bytes(), isolated.max_members()) == (10_000, 1 << 20, 4)
    monkeypatch.delenv("RECSYS_INGEST_MEMORY_MB")
    monkeypatch.setenv("RECSYS_PARSE_MEMORY_MB", "2")  # the former name still works
    assert isolated.max_rows() == 10_000
    monkeypatch.setenv("RECSYS_MAX_ROWS", "7")  # an explicit cap still overrides its derived value
    assert isolated.max_rows() == 7
    monkeypatch.delenv("RECSYS_MAX_ROWS")
    with pytest.raises(ResourceError, match="5 members, over the limit of 4"):
        read_table(_zip({f"r{k}.csv": b"u,i\n1,2\n" for k in range(5)}), "five.zip")
    with pytest.raises(ResourceError, match=r"unpacks to 1.1 MB, over the 1.0 MB limit"):
        read_table(_zip({"ratings.csv": b"u,i\n" + b"1,2\n" * 300_000}, zipfile.ZIP_STORED), "big.zip")


def test_preview_sends_back_the_first_rows_and_the_mapping_of_every_row() -> None:
    rows = "\n".join(f"{u},{i},{3 + (u % 3)}" for u, i in zip(range(5000), range(7, 5007))) + "\n"
    found = preview_upload(("user,item,rating\n" + rows).encode(), "r.csv")
    assert len(found.raw.frame) == PREVIEW_ROWS and found.raw.n_rows == 5000
    assert found.mapping["user"] == "user" and found.mapping["rating"] == "rating" and found.problem is None


def test_ingest_upload_saves_in_the_child_and_refusals_save_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    data = b"user,item,rating\n" + b"".join(b"u%d,i%d,%d\n" % (k % 40, k % 13, 1 + k % 5) for k in range(600))
    items = b"item_id,title\n" + b"".join(b"i%d,Film %d\n" % (k, k) for k in range(13))
    record, report = ingest_upload(ws, data, "r.csv", items=items, items_filename="items.csv", name="r")
    assert record.name == "r" and ws.load_dataset("r").n_interactions == record.n_interactions
    assert any("item metadata: 13 items" in line for line in report.lines())
    with pytest.raises(DataError, match="empty user id"):
        ingest_upload(ws, b"user,item\n,1\n2,3\n", "bad.csv", name="bad")
    with pytest.raises(ConfigError, match="already exists"):  # the child's own error class comes back
        ingest_upload(ws, data, "r.csv", name="r")
    assert [r.name for r in ws.list_datasets()] == ["r"]
    assert not list((ws.root / ".tmp").iterdir())


# ---- model zips ---------------------------------------------------------------------------------------


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": ["a", "b", "b", "c", "b"], "timestamp": [1, 2, 3, 4, 5]})
    folder = Popularity().fit(build_dataset(frame, name="tiny")).save(tmp_path / "run-00001-popularity")
    np.save(folder / "per_user.npy", np.zeros(3, dtype=[("user", "i8"), ("ndcg", "f8")]))  # what a run folder has
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {f"{folder.name}/{p.name}": p.read_bytes() for p in folder.iterdir()}


def test_the_apps_own_run_folder_zipped_is_accepted(model_folder: Path, tmp_path: Path) -> None:
    dest, model = import_model_zip(_zip(_files(model_folder)), tmp_path / "models")
    assert (dest / "model.safetensors").is_file() and not (dest / "per_user.npy").exists()
    assert model.n_items_ == 3


def test_hostile_model_zips_are_refused_before_reading_and_leave_nothing(model_folder: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    files = _files(model_folder)
    ids = json.dumps([f"i{k}" for k in range(MAX_ITEMS + 1)]).encode()
    cases = {
        "item ids": (files | {f"{model_folder.name}/item_ids.json": ids}, "item_ids.json lists about 2,000,001"),
        "1 MiB members": (files | {f"extra/{k}.json": b"\0" * (1 << 20) for k in range(40)}, "expands"),
        "members": (files | {f"m/{k}.txt": b"" for k in range(300)}, "30[0-9] members, over the limit of 256"),
    }
    for label, (content, words) in cases.items():
        start = time.perf_counter()
        with pytest.raises(ResourceError, match=words):
            import_model_zip(_zip(content), models, filename=f"{label}.zip")
        assert time.perf_counter() - start < 2, label
        assert not models.exists() or not list(models.iterdir()), label
    # A model the caller refuses (it does not fit the dataset) is not kept either.
    with pytest.raises(ModelError, match="not usable: refused"):
        import_model_zip(_zip(files), models, accept=lambda m: (_ for _ in ()).throw(DataError("refused")))
    assert not list(models.iterdir())


# ---- leftovers on a timer ------------------------------------------------------------------------------


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    for inner in [path, *path.rglob("*")]:
        os.utime(inner, (then, then))
    return path


def test_sweep_removes_old_leftovers_and_keeps_fresh_ones(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    models = ws.models_dir()
    (killed := ws.root / ".tmp" / "killed-save").mkdir()
    (killed / "part.parquet").write_bytes(b"x" * 1000)
    (half := models / "uploaded-1a2b3c4d.tmp").mkdir()
    (old_upload := models / "uploaded-5e6f7a8b").mkdir()
    (fresh := ws.root / ".tmp" / "saving-now").mkdir()
    (writing := ws.root / ".tmp" / "long-save").mkdir()
    (writing / "old.bin").write_bytes(b"1")
    _aged(killed, 1000), _aged(half, 1000), _aged(old_upload, 2 * 86400), _aged(writing, 5000)
    (writing / "new.bin").write_bytes(b"2")  # a file written just now keeps its folder
    removed = set(ws.sweep_leftovers(grace_s=900))
    assert removed == {killed, half, old_upload}
    assert fresh.exists() and writing.exists()


def test_the_sweeper_runs_on_a_timer(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    thread = start_sweeper(ws, every_s=0.05)
    assert start_sweeper(ws, every_s=0.05) is thread  # one per workspace and process
    left = _aged(_make(ws.root / ".tmp" / "killed"), 3600)
    deadline = time.time() + 5
    while left.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not left.exists()


def _make(folder: Path) -> Path:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 100)
    return folder


# ---- errors that misled ---------------------------------------------------------------------------------


def test_a_consistent_wide_file_is_said_to_have_too_many_columns() -> None:
    header = ",".join(f"c{k}" for k in range(100_000)) + "\n"
    wide = (header + ",".join("1" for _ in range(100_000)) + "\n").encode()
    with pytest.raises(DataError, match=r"100,000 columns, over the limit of 1,000 columns"):
        preview_upload(wide, "wide.csv")
    narrow_wide = (",".join(f"c{k}" for k in range(2000)) + "\n" + ",".join("1" * 2000) + "\n").encode()
    with pytest.raises(DataError, match=r"2,000 columns, over the limit"):
        read_table(narrow_wide, "w.csv")


def test_quoted_newlines_past_a_reader_block_are_read() -> None:
    # 17 MB: the CSV reader's blocks are 16 MB, so a quoted newline falls on a block edge.
    row = b'u%d,i%d,"first line\nsecond line, with a comma"\n'
    data = b"user,item,review\n" + b"".join(row % (k % 300, k % 97) for k in range(400_000))
    assert len(data) > 16 << 20
    found = preview_upload(data, "reviews.csv")
    assert found.raw.n_rows == 400_000 and found.raw.frame["review"].iat[0] == "first line\nsecond line, with a comma"


def test_utf16_without_a_byte_order_mark_is_read() -> None:
    text = "user,item,rating\n" + "".join(f"ü{k % 20},ï{k % 9},{1 + k % 5}\n" for k in range(300))
    for codec in ("utf-16-le", "utf-16-be"):
        raw = read_table(text.encode(codec), f"{codec}.csv")
        assert raw.n_rows == 300 and raw.frame["user"].iat[1] == "ü1"


def test_nested_parquet_is_flattened_or_named() -> None:
    def parquet(table: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    events = pa.table({"event": [{"user": k % 5, "item": k % 7} for k in range(40)]})
    _, report = load_dataset(parquet(events), "events.parquet")
    assert report.mapping["user"] == "event.user" and report.mapping["item"] == "event.item"
    tagged = pa.table({"user": [k % 5 for k in range(40)], "item": [k % 7 for k in range(40)],
                       "tags": [[1, 2]] * 40})
    _, report = load_dataset(parquet(tagged), "tagged.parquet")
    assert "nested columns left out" in report.detected and "tags" in report.detected
    lists = pa.table({"user": [[k % 5] for k in range(40)], "item": [f"x{k % 7}" for k in range(40)]})
    with pytest.raises(DataError, match="nested columns") as caught:
        read_table(parquet(lists), "lists.parquet")
    assert "plain columns" in caught.value.hint


def test_negative_ratings_are_reported_with_what_to_do() -> None:
    data = b"user,item,rating\n" + b"".join(b"u%d,i%d,%d\n" % (k % 30, k % 11, k % 7 - 3) for k in range(330))
    _, report = load_dataset(data, "scale.csv")
    note = next(line for line in report.lines() if "negative" in line)
    assert "lowest -3" in note and "threshold" in note
