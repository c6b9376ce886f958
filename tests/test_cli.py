"""The command line, run as a user runs it: the `recsys` script from another folder, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.own_data import as_tsv, listening_log

SCRIPT = Path(sys.executable).with_name("recsys")


def recsys(*args: str, cwd: Path, workspace: Path) -> subprocess.CompletedProcess:
    """Run the installed console script outside the repository; stdin closed, as in CI."""
    assert SCRIPT.is_file(), "install the package (pip install --no-deps -e .), as the README says"
    return subprocess.run([str(SCRIPT), "--workspace", str(workspace), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """One ingested listening log and one saved EASE run, shared by the tests below."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "plays.tsv").write_bytes(as_tsv(listening_log(n_users=120, n_items=80)))
    ws = folder / "ws"
    ingest = recsys("ingest", "plays.tsv", "--name", "plays", cwd=folder, workspace=ws)
    train = recsys("train", "--dataset", "plays", "--model", "ease", cwd=folder, workspace=ws)
    return {"folder": folder, "ws": ws, "ingest": ingest, "train": train}


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # exactly one document: anything else on stdout fails here


def test_ingest_reports_counts_and_the_missing_order(session) -> None:
    out = _json(session["ingest"])
    assert out["dataset"] == "plays" and out["stats"]["has_counts"] and out["stats"]["order"] == "none"
    assert out["stats"]["time_min"] is None
    report = "\n".join(out["report"])
    assert "read as a count, not a rating" in report and "random interaction per user" in report


def test_train_prints_one_json_document_with_the_holdout_and_saves_the_model(session) -> None:
    out = _json(session["train"])
    assert out["model"] == "ease" and out["status"] == "finished" and Path(out["artifact_dir"]).is_dir()
    assert 0 < out["metrics"]["ndcg@10"] <= 1


def test_evaluate_and_recommend_use_the_saved_model(session) -> None:
    model_dir = json.loads(session["train"].stdout)["artifact_dir"]
    ev = _json(recsys("evaluate", "--model-dir", model_dir, "--dataset", "plays", cwd=session["folder"],
                      workspace=session["ws"]))
    assert ev["metrics"]["ndcg@10"] == pytest.approx(json.loads(session["train"].stdout)["metrics"]["ndcg@10"])
    rec = _json(recsys("recommend", "--model-dir", model_dir, "--dataset", "plays", "--user", "u3", "-k", "5",
                       cwd=session["folder"], workspace=session["ws"]))
    assert len(rec["recommendations"]) == 5 and not set(rec["history"]) & {r["item_id"] for r in
                                                                          rec["recommendations"]}


def test_bad_input_exits_2_with_a_message_and_nothing_on_stdout(session) -> None:
    bad = session["folder"] / "bad.csv"
    bad.write_text("user,item,rating\n1,2,3\n1,3\n")
    proc = recsys("ingest", str(bad), cwd=session["folder"], workspace=session["ws"])
    assert proc.returncode == 2 and proc.stdout == "" and "bad.csv" in proc.stderr and "What to do" in proc.stderr
    seq = recsys("train", "--dataset", "plays", "--model", "sasrec", "--no-save", cwd=session["folder"],
                 workspace=session["ws"])
    assert seq.returncode == 2 and "has no timestamps" in seq.stderr and seq.stdout == ""
    split = recsys("train", "--dataset", "plays", "--model", "ease", "--split", "temporal", "--no-save",
                   cwd=session["folder"], workspace=session["ws"])
    assert split.returncode == 2 and "temporal split needs timestamps" in split.stderr
