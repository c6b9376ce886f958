"""`recsys tune`: one JSON document on stdout from a real process (the study, the winner's test metrics over the
seeds and its recorded runs); `--show` reads the stored study back without a trial; a family without a search
space exits 2 saying what to tune instead."""

from __future__ import annotations

import json
import subprocess
import sys

from recsys_core import cli
from recsys_core.workspace.registry import Workspace
from tests.test_jobs import _sequences


def _cycles(n_users: int = 60, n_items: int = 25, length: int = 10):
    return _sequences(n_users, n_items, length)  # users walking a cycle of items, one step a time unit


def test_recsys_tune_prints_one_json_document_and_the_study_can_be_shown_again(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    ws.save_dataset(_cycles(), "cycle")
    done = subprocess.run([sys.executable, "-m", "recsys_core", "--workspace", str(ws.root), "tune", "--dataset",
                           "cycle", "--model", "itemknn", "--budget-cpu-s", "60", "--max-trials", "3", "--seeds", "0"],
                          check=False, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # the whole of stdout is one document
    assert out["study"] == "cycle:itemknn:leave_one_out" and out["stopped"] == "trials"
    assert [t["state"] for t in out["trials"]] == ["complete"] * 3
    assert out["trials"][0]["params"] == {"k": 100, "shrink": 10.0}  # the defaults first
    assert out["final"]["ndcg@10"]["seeds"] == [0] and len(out["run_ids"]) == 1
    assert ws.get_run(out["run_ids"][0]).metrics["tune"]["best"]["params"] == out["best"]["params"]

    assert cli.main(["--workspace", str(ws.root), "tune", "--dataset", "cycle", "--model", "itemknn", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["trials"] == out["trials"] and shown["budgets"] == [60.0]

    assert cli.main(["--workspace", str(ws.root), "tune", "--dataset", "cycle", "--model", "popularity"]) == 2
    assert "declares no search space" in capsys.readouterr().err
