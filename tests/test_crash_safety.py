"""Saves survive a kill at any moment: the registry and the files always agree, and leftovers are swept."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from recsys_core.models.base import load_model
from recsys_core.workspace.registry import Workspace

REPO = Path(__file__).resolve().parents[1]
# Saves a dataset and records a run (with its model files) over and over, until killed.
WRITER = """
import sys, pandas as pd
from recsys_core.data.dataset import build_dataset
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace
ws = Workspace(sys.argv[1])
rows = [(f"u{u}", f"i{(u * 7 + k) % 40}", k) for u in range(60) for k in range(6)]
ds = build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="crash")
print("ready", flush=True)
for i in range(10_000):
    ws.save_dataset(ds, f"d{i % 3}", overwrite=True)
    run_experiment(ds, "ease" if i % 2 else "popularity", workspace=ws, dataset_name=f"d{i % 3}")
"""


def _consistent(ws: Workspace) -> None:
    """Every recorded dataset and run points at complete files."""
    for record in ws.list_datasets():
        assert ws.load_dataset(record.name).n_users == 60
    for run in ws.list_runs():
        assert run.status == "finished" and run.artifact_dir is not None
        assert load_model(run.artifact_dir).n_items_ == 40


def test_killing_a_writer_at_random_moments_never_leaves_records_without_files(tmp_path: Path) -> None:
    root, rng = tmp_path / "ws", random.Random(7)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.2))
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait(timeout=30)
        _consistent(Workspace(root))
    ws = Workspace(root)
    assert len(ws.list_runs()) > 0
    ws._sweep_tmp(grace_s=0)  # what a start after the stale age does
    recorded = {r.artifact_dir for r in ws.list_runs()} | {d.path for d in ws.list_datasets()}
    assert list((root / ".tmp").iterdir()) == []
    assert set((root / "models").glob("run-*")) <= recorded
    assert set((root / "datasets").glob("*/*")) <= recorded
    _consistent(ws)
