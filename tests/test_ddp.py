"""Distributed (data-parallel) training with torchrun, two processes on CPU with gloo, as a user runs it.

SASRec+ through `torchrun --nproc_per_node 2 -m recsys_core train`, and BERT4Rec through `run_experiment`
in two processes, must give what one process gives with the same global batch: the batch is split between
the processes, each weighs its rows' loss terms over the whole batch's, DDP averages the gradients, and
every random draw (BERT4Rec's Cloze masks, SASRec+'s sampled negatives) is made for the whole batch from
the same generator state in every process. Tolerance: per-epoch training loss within 1e-5 relative and metrics
within 0.005 (about two of 160 users moving one rank): the only difference left is the order of float
additions (each process's share of the gradient is scaled and then averaged), i.e. weights that differ
in the last bits, which can only reorder items whose scores are all but tied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data import load_dataset
from recsys_core.evaluation.metrics import evaluate, train_popularity
from recsys_core.models.base import load_model
from recsys_core.training.experiment import make_split, run_experiment
from recsys_core.workspace.registry import Workspace
from tests.ddp_worker import BERT4REC

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the torchrun processes get OMP_NUM_THREADS=1 too

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
N_ITEMS = 30
# 160 windows in batches of 53: the last batch has one row, so one process gets none of it.
SASREC = {"max_len": 12, "hidden": 32, "layers": 1, "heads": 2, "dropout": 0.0, "epochs": 4, "batch_size": 53,
          "device": "cpu", "eval_every": 1, "patience": 0, "loss": "sampled", "n_negatives": 8}


def successor_rows(n_users: int = 160, seed: int = 0) -> pd.DataFrame:
    """Every user walks the catalogue in order from a random start: item i is always followed by i+1."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        start, length = rng.integers(0, N_ITEMS), rng.integers(4, 12)
        rows += [(f"u{user}", f"i{(start + t) % N_ITEMS:02d}", t) for t in range(length)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """torchrun in a session of its own, so a hung run is killed with both of its workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*TORCHRUN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "succ.csv").write_text(successor_rows().to_csv(index=False))
    ds, _ = load_dataset(str(folder / "succ.csv"), name="successor")
    return {"folder": folder, "csv": folder / "succ.csv", "ds": ds, "split": make_split(ds)}


@pytest.fixture(scope="module")
def sasrec_two(data) -> dict:
    """`torchrun -m recsys_core train` with a checkpoint folder and a workspace, as a user would type it."""
    sets = [a for k, v in {**SASREC, "checkpoint_dir": "ckpt"}.items() for a in ("--set", f"{k}={v}")]
    ws = data["folder"] / "ws"
    proc = torchrun("-m", "recsys_core", "--workspace", str(ws), "train", "--dataset", str(data["csv"]),
                    "--model", "sasrec", *sets, cwd=data["folder"])
    return {"out": json.loads(proc.stdout), "ws": ws}  # one JSON document: rank 1 printed nothing


def test_sasrec_on_two_processes_matches_one_process_with_the_same_global_batch(data, sasrec_two) -> None:
    one = run_experiment(data["ds"], "sasrec", SASREC, split=data["split"])
    two = sasrec_two["out"]
    history = json.loads((sasrec_two["ws"] / "ckpt" / "checkpoint.json").read_text())["history"]  # rank 0's
    loss_one = [h["loss"] for h in one.model.training_history()]
    loss_two = [h["loss"] for h in history]
    assert len(loss_two) == 4 and loss_two[-1] < loss_two[0]
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    valid_one = [h["metrics"]["ndcg@10"] for h in one.model.training_history()]
    valid_two = [h["metrics"]["ndcg@10"] for h in history]  # validation split between the processes
    np.testing.assert_allclose(valid_two, valid_one, atol=0.005)
    for key in ("ndcg@10", "hr@10", "recall@20", "mrr@10"):
        assert two["metrics"][key] == pytest.approx(one.metrics[key], abs=0.005), key
    assert valid_two[-1] > valid_two[0] + 0.05  # it learnt, in step with one process


def test_rank_0_saves_one_run_whose_model_and_checkpoint_load_and_score(data, sasrec_two) -> None:
    ws = Workspace(sasrec_two["ws"])
    assert [r.model for r in ws.list_runs()] == ["sasrec"]  # recorded once, not once per process
    model = load_model(sasrec_two["out"]["artifact_dir"])
    again = evaluate(model, data["split"].test, item_popularity=train_popularity(data["split"]))
    for key in ("ndcg@10", "hr@10", "coverage@10"):  # the model rank 0 evaluated, scoring the same
        assert again[key] == pytest.approx(sasrec_two["out"]["metrics"][key], abs=1e-9), key
    # Resuming from rank 0's checkpoint in one process finds the run finished and ends with the same model.
    resumed = run_experiment(data["ds"], "sasrec", {**SASREC, "checkpoint_dir": str(sasrec_two["ws"] / "ckpt")},
                             split=data["split"])
    assert resumed.model.fit_report()["steps"] == 16
    assert resumed.metrics["ndcg@10"] == pytest.approx(sasrec_two["out"]["metrics"]["ndcg@10"], abs=1e-9)


@pytest.fixture(scope="module")
def worker(data) -> Path:
    out = data["folder"] / "worker"
    out.mkdir()
    torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(out), str(data["csv"]), cwd=data["folder"])
    return out


def test_bert4rec_on_two_processes_matches_one_process_with_the_same_global_batch(data, worker) -> None:
    """The Cloze masks are drawn for the whole batch, then each process keeps its rows: same training."""
    two = json.loads((worker / "bert4rec.json").read_text())
    one = run_experiment(data["ds"], "bert4rec", BERT4REC, split=data["split"])
    assert two["stopped"] == "epochs" and len(two["history"]) == BERT4REC["epochs"]
    history_one = one.model.training_history()
    np.testing.assert_allclose([h["loss"] for h in two["history"]], [h["loss"] for h in history_one], rtol=1e-5)
    np.testing.assert_allclose([h["metrics"]["ndcg@10"] for h in two["history"]],
                               [h["metrics"]["ndcg@10"] for h in history_one], atol=0.005)
    for key in ("ndcg@10", "hr@10", "recall@20", "mrr@10"):
        assert two["metrics"][key] == pytest.approx(one.metrics[key], abs=0.005), key
    assert two["metrics"]["ndcg@10"] > 0.6  # learnt the successor rule (a popularity ranking scores ~0.22)


def test_the_test_split_is_scored_by_both_processes_and_equals_one_process(worker) -> None:
    """Each process ranks its share of the test users; both end with every user's row, in the caller's order,
    and the same metrics (coverage from the union of their top-K items) as one process scoring them all."""
    for rank in (0, 1):
        out = json.loads((worker / f"test-eval-{rank}.json").read_text())
        for name, users in (("", 160), ("few_", 6)):
            sharded, one = out[f"{name}sharded"], out[f"{name}one"]
            assert sharded["per_user"]["user"] == one["per_user"]["user"] and len(one["per_user"]["user"]) == users
            assert sharded["per_user"]["rank"] == one["per_user"]["rank"]
            assert set(sharded["metrics"]) == set(one["metrics"])
            for key, value in one["metrics"].items():
                assert sharded["metrics"][key] == pytest.approx(value, abs=1e-9), key
        assert out["few_one"]["metrics"]["coverage@1"] * N_ITEMS >= 4  # more top-1 items than 3 users could give


def test_processes_whose_weights_differ_are_caught(worker) -> None:
    """Every process checks that they all ended with the same weights (here rank 1's were nudged by 1e-3)."""
    for rank in (0, 1):
        assert "ended with different weights" in (worker / f"sync-{rank}.txt").read_text()


def test_text_tower_loss_and_gradient_on_two_processes_equal_the_whole_batch(worker) -> None:
    """Each process encodes half of the pairs; the other half's docs still serve as its negatives."""
    out = json.loads((worker / "tower_gradient.json").read_text())
    assert out["n_params"] > 0
    assert out["sharded"] == pytest.approx(out["whole"], rel=1e-5)
    assert out["max_rel_grad_diff"] < 1e-4


def test_text_tower_fine_tunes_on_two_processes(worker) -> None:
    out = json.loads((worker / "tower.json").read_text())
    assert out["fine_tuned"] and [h["step"] for h in out["history"]] == [2, 4]
    assert all(0 <= h["metrics"]["ndcg@10"] <= 1 for h in out["history"])  # validation split between ranks
    assert set(out["recipe_scores"]) == {"recency_mean", "history_text"}
    assert out["gathered_vs_one_piece"] < 1e-5  # each rank's share of the catalogue, back in order
    assert 0 < out["metrics"]["ndcg@10"] <= 1
