"""Latency of one user's top-10 (seen items excluded) and of the Recommend page, on ML-100k, CPU.

    python bench/latency.py                              # trains EASE and a 120 s BERT4Rec
    python bench/latency.py --bert4rec-dir PATH          # reuse a saved BERT4Rec folder
    python bench/latency.py --models ease --page-users 5 # quicker

Per model: median / p90 milliseconds of `recommend(model, history, 10)` (one `score` call, seen-item
mask, top-k, item metadata) over 200 random users, with torch's default threads and with one thread, and the batched throughput of `recommend_many`
over every user. Page: an AppTest of `views/recommend.py` on a temporary workspace holding ML-100k
and the model; after one warm run, each run switches to a new user and is timed (goal < 1.5 s).
Writes bench/results/latency-ml-100k-<YYYYMMDD>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.data.resolve import resolve_dataset
from recsys_core.models.base import load_model
from recsys_core.recommend.topk import recommend, recommend_many
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace

ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
NAME = "ml-100k"


def time_one_user(model, ds, users: np.ndarray, k: int, threads: int = 0) -> list[float]:
    """Milliseconds of `recommend` per user, with `threads` torch threads (0: as configured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        recommend(model, ds.history(int(users[0])), k, items=ds.items, popularity=ds.item_popularity)  # warm-up
        times = []
        for u in users:
            start = time.perf_counter()
            recs = recommend(model, ds.history(int(u)), k, items=ds.items, popularity=ds.item_popularity)
            times.append((time.perf_counter() - start) * 1e3)
            assert not set(recs["item"]) & set(ds.history(int(u)).tolist())
    finally:
        torch.set_num_threads(before)
    return times


def latency_summary(model, ds, users: np.ndarray, k: int) -> dict:
    # One history is a small job: on a busy machine a multi-threaded torch pool mostly waits for its
    # other threads, so the single-thread figure is reported too.
    default, single = time_one_user(model, ds, users, k), time_one_user(model, ds, users, k, threads=1)
    return {"topk_median_ms": round(statistics.median(default), 3),
            "topk_p90_ms": round(float(np.percentile(default, 90)), 3),
            "topk_median_ms_1thread": round(statistics.median(single), 3),
            "topk_p90_ms_1thread": round(float(np.percentile(single, 90)), 3), "users_timed": len(users)}


def time_batched(model, ds, k: int) -> dict:
    histories = ds.sequences()
    start = time.perf_counter()
    recommend_many(model, histories, k, popularity=ds.item_popularity)
    wall = time.perf_counter() - start
    return {"all_users_s": round(wall, 3), "users_per_s": round(len(histories) / wall, 1)}


def page_render(root: Path, artifact_dir: str, users: np.ndarray) -> dict:
    """Seconds of `at.run()` for a new user on the Recommend page, after a warm run (model cached)."""
    os.environ["RECSYS_WORKSPACE"] = str(root)
    sys.path.insert(0, str(ROOT / "tests"))
    from apptest_util import _NavigationOnly
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    script_runner.PagesManager = _NavigationOnly  # as tests/apptest_util.navigation_mode
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["active_dataset"] = NAME
    at.session_state["active_model_dir"] = artifact_dir
    at.run()
    at.switch_page("views/recommend.py").run()
    assert not at.exception, at.exception
    times = []
    for u in users:
        at.selectbox(key="rec_user").set_value(int(u))
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
        assert not at.exception, at.exception
    return {"page_render_median_s": round(statistics.median(times), 3), "page_render_max_s": round(max(times), 3),
            "page_users_timed": len(users)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ML100K))
    parser.add_argument("--models", default="ease,bert4rec")
    parser.add_argument("--bert4rec-dir", default="", help="a saved BERT4Rec folder (else one is trained)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="BERT4Rec training time budget")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--page-users", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="latency-ws-"))
    ws = Workspace(root)
    ds = resolve_dataset(args.data, None)
    ds.name = NAME
    ws.save_dataset(ds, NAME, overwrite=True)
    rng = np.random.default_rng(0)
    users = rng.choice(ds.n_users, min(args.users, ds.n_users), replace=False)
    page_users = rng.choice(ds.n_users, min(args.page_users, ds.n_users), replace=False)
    results: dict = {}
    for family in args.models.split(","):
        row: dict = {}
        if family == "bert4rec" and args.bert4rec_dir:
            artifact, model = args.bert4rec_dir, load_model(args.bert4rec_dir)
            row["loaded_from"] = str(Path(args.bert4rec_dir).resolve())
        else:
            overrides = {"cpu_budget_s": args.budget_s} if family in ("bert4rec", "sasrec") else None
            start = time.perf_counter()
            run = run_experiment(ds, family, overrides, workspace=ws, dataset_name=NAME)
            row.update(train_s=round(time.perf_counter() - start, 1), ndcg_at_10=round(run.metrics["ndcg@10"], 4))
            artifact, model = run.artifact_dir, load_model(run.artifact_dir)
        row.update(latency_summary(model, ds, users, args.k))
        row.update(time_batched(model, ds, args.k))
        row.update(page_render(root, artifact, page_users))
        results[family] = row
        print(family, json.dumps(row), flush=True)

    report = {
        "bench": "latency", "dataset": NAME, "users": ds.n_users, "items": ds.n_items,
        "interactions": ds.n_interactions, "k": args.k, "device": "cpu",
        "topk_median_ms": {f: r["topk_median_ms"] for f, r in results.items()},
        "topk_median_ms_1thread": {f: r["topk_median_ms_1thread"] for f, r in results.items()},
        "page_render_median_s": {f: r["page_render_median_s"] for f, r in results.items()},
        "models": results,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_1m": round(os.getloadavg()[0], 2)},
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"latency-ml-100k-{datetime.now():%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
