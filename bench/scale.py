"""Scale benchmark on generated data: ingest, item-kNN fit, full evaluation, top-10 and one SHAP explanation.

Sizes (seeded, Zipf item popularity, lognormal user activity, random timestamps):
    1m: 1M interactions, 20k items, 20k users      5m: 5M interactions, 100k items, 100k users

SHAP explains one history for item-kNN and for a briefly trained SASRec+ (sampled loss; its s/step
is recorded, as an estimate, not an epoch), each twice: through `score_items` (only the explained
item is scored) and through the full-catalogue default (the cost before `score_items` existed).

Each stage records wall seconds, CPU seconds (`time.process_time()`, all threads), the process's
peak RSS so far and the 1-minute load average at its end; the machine is shared, so read times
against the load. JSON goes to bench/results/scale-<size>-<YYYYMMDD>.json.

    python bench/scale.py --size 1m
    python bench/scale.py --size 5m --stages ingest,evaluation
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import numpy as np
import pandas as pd
import torch

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.splits import Split, leave_one_out
from recsys_core.evaluation.metrics import evaluate
from recsys_core.insight import explain
from recsys_core.models.base import Recommender
from recsys_core.models.itemknn import ItemKNN
from recsys_core.models.popularity import Popularity
from recsys_core.models.sasrec import SASRec, SASRecConfig
from recsys_core.models.settings import build_config
from recsys_core.recommend.topk import recommend

SIZES = {"1m": (1_000_000, 20_000), "5m": (5_000_000, 100_000)}
STAGES = ("ingest", "itemknn", "evaluation", "topk", "shap")
ROWS_PER_USER = 50  # mean activity; lognormal spread around it


def generate(rows: int, n_items: int, seed: int = 0) -> pd.DataFrame:
    """Interactions (user, item, timestamp): Zipf(0.9) item popularity, lognormal(0, 1) user activity."""
    rng = np.random.default_rng(seed)
    n_users = max(rows // ROWS_PER_USER, 10)
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, size=rows, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.permutation(n_items)[rng.choice(n_items, size=rows, p=popularity / popularity.sum())]
    stamps = rng.integers(1_500_000_000, 1_600_000_000, size=rows)
    return pd.DataFrame({"user": users, "item": items, "timestamp": stamps})


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measured(record: dict, name: str, fn: Callable[[], object]) -> object:
    """Run one stage, storing wall/CPU seconds, peak RSS so far and load under record["stages"][name]."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    record["stages"][name] = {"wall_s": round(time.perf_counter() - wall, 3),
                              "cpu_s": round(time.process_time() - cpu, 3),
                              "peak_rss_mb_so_far": round(peak_mb(), 1),
                              "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    print(f"{name}: {record['stages'][name]}", file=sys.stderr, flush=True)
    return out


def stage_evaluation(ds: Dataset, split: Split, record: dict) -> None:
    """Popularity (precomputed scores) over the whole leave-one-out test split, at torch's thread count
    and again on one thread: on a shared 2-core box a descheduled second thread stalls every op."""
    model = Popularity().fit(ds, split=split)
    users = len(split.test)
    result = measured(record, "evaluation", lambda: evaluate(model, split.test, ks=(10,)))
    seconds = record["stages"]["evaluation"]["wall_s"]
    record["evaluation_cells_per_s"] = round(users * ds.n_items / seconds)
    record["stages"]["evaluation"] |= {"users": users, "cells": users * ds.n_items, "threads": torch.get_num_threads(),
                                       "popularity_ndcg@10": round(result["ndcg@10"], 5)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured(record, "evaluation_1_thread", lambda: evaluate(model, split.test, ks=(10,)))
    finally:
        torch.set_num_threads(threads)
    record["evaluation_cells_per_s_1_thread"] = round(users * ds.n_items / record["stages"]["evaluation_1_thread"]["wall_s"])


def pick_users(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """Users with 10-200 interactions (a typical history to recommend for and explain)."""
    lengths = np.diff(ds.indptr)
    eligible = np.flatnonzero((lengths >= 10) & (lengths <= 200))
    return np.random.default_rng(seed).choice(eligible, min(n, len(eligible)), replace=False)


def stage_topk(ds: Dataset, model: ItemKNN, record: dict, n_users: int = 50) -> None:
    users = pick_users(ds, n_users)
    recommend(model, ds.history(int(users[0])), 10)  # warm-up
    times = []
    for user in users:
        start = time.perf_counter()
        recommend(model, ds.history(int(user)), 10)
        times.append((time.perf_counter() - start) * 1e3)
    record["topk_ms"] = round(float(np.median(times)), 2)
    record["stages"]["topk"] = {"median_ms": record["topk_ms"], "p90_ms": round(float(np.percentile(times, 90)), 2),
                                "users": len(users), "model": model.family}


def sasrec_for_shap(ds: Dataset, record: dict, steps: int) -> SASRec:
    """SASRec+ (sampled loss) trained `steps` optimizer steps on every sequence, no validation: a real
    sequential model over the whole catalogue, for timing; its s/step is recorded as an estimate."""
    config = build_config(SASRecConfig, {"loss": "sampled", "max_steps": steps, "epochs": 1, "patience": 0,
                                         "batch_size": 128, "device": "cpu"})
    model = measured(record, "sasrec_fit", lambda: SASRec(config).fit(ds))
    report = model.fit_report()
    record["stages"]["sasrec_fit"] |= {"steps": report["steps"], "loss": "sampled", "batch_size": report["batch_size"],
                                       "s_per_step": round(report["train_seconds"] / max(report["steps"], 1), 3)}
    return model


def one_explanation(model: Recommender, history: np.ndarray, item: int, full_catalogue: bool) -> dict:
    """Wall/CPU seconds of one history explanation; `full_catalogue` forces the default `score_items`
    (score every item, keep one column), i.e. what an explanation cost before the overrides."""
    if full_catalogue:
        model.score_items = partial(Recommender.score_items, model)
    try:
        explainer = explain.Explainer(model, None, cache_size=1)
        wall, cpu = time.perf_counter(), time.process_time()
        result = explainer.explain_history(history, item)
        return {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
                "n_evals": result.n_evals, "method": result.method}
    finally:
        model.__dict__.pop("score_items", None)


def stage_shap(ds: Dataset, models: list[Recommender], record: dict) -> None:
    user = int(pick_users(ds, 1, seed=1)[0])
    history = ds.history(user)
    explain.warm_up()
    out = {"history_len": len(history), "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    for model in models:
        item = int(recommend(model, history, 1)["item"].iloc[0])
        out[model.family] = {"score_items": one_explanation(model, history, item, False),
                             "full_catalogue": one_explanation(model, history, item, True)}
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    out["peak_rss_mb_so_far"] = round(peak_mb(), 1)
    record["stages"]["shap"] = out
    record["shap_s"] = max(out[m.family]["score_items"]["wall_s"] for m in models)
    print(f"shap: {out}", file=sys.stderr, flush=True)


def run(size: str, stages: set[str], seed: int, sasrec_steps: int = 30) -> dict:
    rows, n_items = SIZES[size]
    record: dict = {"size": size, "rows": rows, "items_requested": n_items, "seed": seed, "stages": {},
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
                    "date": dt.date.today().isoformat()}
    frame = generate(rows, n_items, seed)
    ds = measured(record, "ingest", partial(build_dataset, frame, name=f"synthetic-{size}"))
    del frame
    record["ingest_s"] = record["stages"]["ingest"]["wall_s"]
    record |= {"users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions}
    split = leave_one_out(ds)
    model = None
    if stages & {"itemknn", "topk", "shap"}:
        model = measured(record, "itemknn_fit", lambda: ItemKNN().fit(ds, split=split))
        record["itemknn_fit_s"] = record["stages"]["itemknn_fit"]["wall_s"]
    if "evaluation" in stages:
        stage_evaluation(ds, split, record)
    if "topk" in stages:
        stage_topk(ds, model, record)
    if "shap" in stages:
        stage_shap(ds, [model, sasrec_for_shap(ds, record, sasrec_steps)], record)
    record["peak_mem_mb"] = round(peak_mb(), 1)
    record["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1m")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--sasrec-steps", type=int, default=30, help="training steps of the SASRec+ explained by SHAP")
    parser.add_argument("--out", default="", help="output file (default bench/results/scale-<size>-<date>.json)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    stages = {s for s in args.stages.split(",") if s}
    unknown = stages - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = run(args.size, stages, args.seed, args.sasrec_steps)
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_write:
        out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"scale-{args.size}-{dt.date.today():%Y%m%d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
