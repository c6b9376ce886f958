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
    assert "add a timestamp column" in seq.stderr and "measuring" not in seq.stderr  # refused before any timing


def test_train_help_lists_every_model_with_its_defaults_and_the_profiles(session) -> None:
    from recsys_core.models.base import family_class
    from recsys_core.training.experiment import families

    out = recsys("train", "--help", cwd=session["folder"], workspace=session["ws"])
    assert out.returncode == 0, out.stderr
    for family in families():
        assert f"  {family:<11} {family_class(family).description}" in out.stdout, family
    assert "defaults: epochs 200, patience 10" in out.stdout and "one pass over the data: no epochs" in out.stdout
    for profile in ("demo", "full", "none"):
        assert f"\n  {profile:<11} " in out.stdout, profile
    assert "default here: auto = " in out.stdout


def test_every_familys_json_says_its_budget_epochs_best_epoch_and_stop_reason(session) -> None:
    out = _json(session["train"])
    assert out["profile"] == "auto" and out["budget"] is None and out["epochs_run"] is None
    assert out["best_epoch"] is None and out["stop_reason"].startswith("one pass over the data")
    (session["folder"] / "timed.csv").write_text(_timed_log().to_csv(index=False))
    proc = recsys("train", "--dataset", "timed.csv", "--model", "sasrec", "--profile", "demo", "--no-save",
                  *SMALL_SASREC, "--set", "epochs=2", cwd=session["folder"], workspace=session["ws"])
    run = _json(proc)
    assert run["profile"] == "demo" and run["budget"] == {"cpu_budget_s": 240.0, "max_steps": 2700, "epochs": 2}
    assert run["epochs_run"] == 2 and run["best_epoch"] in (1, 2) and run["stop_reason"] == "all epochs run"
    said = proc.stderr.index("expected time: ")  # before the run starts: its progress comes after
    assert "of CPU time" in proc.stderr[said:].splitlines()[0] and said < proc.stderr.index("epoch")


SMALL_SASREC = ("--set", "hidden=16", "--set", "layers=1", "--set", "heads=1", "--set", "max_len=8")


def _timed_log():
    log = listening_log(n_users=60, n_items=80)
    return log.assign(timestamp=range(len(log)))[["user", "artist", "timestamp"]]


def test_a_long_run_is_announced_before_it_starts(session) -> None:
    (session["folder"] / "long.csv").write_text(_timed_log().to_csv(index=False))
    cmd = [str(SCRIPT), "--workspace", str(session["ws"]), "train", "--dataset", "long.csv", "--model", "sasrec",
           "--profile", "none", "--no-save", *SMALL_SASREC, "--set", "epochs=1000000", "--set", "patience=0"]
    proc = subprocess.Popen(cmd, cwd=session["folder"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        lines = []
        for line in proc.stderr:  # the estimate comes first; the run itself is stopped below
            lines.append(line)
            if line.startswith("warning: a long run"):
                break
    finally:
        proc.kill()
        proc.wait(60)
    said = "".join(lines)
    assert "expected time: " in said and "at the latest when every epoch has run" in said, said
    assert "`--profile demo`" in lines[-1] and proc.stdout.read() == ""
