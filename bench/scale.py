"""Scale benchmark on generated data: ingest, item-kNN fit, full evaluation, top-10, one SHAP explanation,
and SASRec+ / BERT4Rec training with the sampled and the full softmax.

Sizes (seeded, Zipf item popularity, lognormal user activity, random timestamps):
    tiny: 20k interactions, 2k items (a smoke run)   1m: 1M interactions, 20k items, 20k users
    5m: 5M interactions, 100k items, 100k users      20m: 20M interactions, 500k items, 400k users
A stage whose estimated memory exceeds what this machine has available is skipped, and `skipped` says why.

Sequential training (stages sasrec, bert4rec) runs in child processes on the dataset saved once, so each
figure has its own peak RSS and a full-softmax probe cannot inflate the pipeline's: s/step over a few
steps with each loss at batch 128 (the memory planner may lower it; the batch used is recorded), and an
epoch estimate = s/step x steps per epoch. SASRec+ with the sampled loss trains one real epoch when its
estimate fits --epoch-budget-s; `total_s` = ingest + item-kNN fit + that epoch + full evaluation.
`--loss-sweep` instead times ce vs sampled on full-length sequences over catalogue sizes (how
`loss="auto"`'s threshold was chosen).

SHAP explains one history for item-kNN and for a briefly trained SASRec+ (sampled loss; its s/step
is recorded, as an estimate, not an epoch), each twice: through `score_items` (only the explained
item is scored) and through the full-catalogue default (the cost before `score_items` existed).

Each stage records wall seconds, CPU seconds (`time.process_time()`, all threads), the process's
peak RSS so far and the 1-minute load average at its end; the machine is shared, so read times
against the load. JSON goes to bench/results/scale-<size>-<YYYYMMDD>.json.

    python bench/scale.py --size tiny --no-write
    python bench/scale.py --size 1m
    python bench/scale.py --size 5m --stages ingest,evaluation
    python bench/scale.py --loss-sweep 5000,20000,50000,100000 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import numpy as np
import pandas as pd
import psutil
import torch

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.splits import Split, leave_one_out
from recsys_core.evaluation.metrics import evaluate, sample_users
from recsys_core.insight import explain
from recsys_core.models.base import Recommender
from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig
from recsys_core.models.popularity import Popularity
from recsys_core.models.sasrec import SASRec, SASRecConfig
from recsys_core.models.sequences import SequenceWindows
from recsys_core.models.settings import build_config
from recsys_core.recommend.topk import recommend

SIZES = {"tiny": (20_000, 2_000), "1m": (1_000_000, 20_000), "5m": (5_000_000, 100_000),
         "20m": (20_000_000, 500_000)}
STAGES = ("ingest", "itemknn", "evaluation", "topk", "shap", "sasrec", "bert4rec")
SEQUENTIAL = {"sasrec": (SASRec, SASRecConfig), "bert4rec": (BERT4Rec, BERT4RecConfig)}
ROWS_PER_USER = 50  # mean activity; lognormal spread around it
BATCH = 128
ONE_THREAD_USERS = 100_000  # users of the one-thread evaluation repeat
INGEST_BYTES_PER_ROW = 150  # measured before the ingest rework: 20M rows peaked at 2.8 GB


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
    sample = sample_users(split.test, ONE_THREAD_USERS)  # a rate, so a sample does (the 20m size has 400k users)
    try:
        measured(record, "evaluation_1_thread", lambda: evaluate(model, sample, ks=(10,)))
    finally:
        torch.set_num_threads(threads)
    record["stages"]["evaluation_1_thread"]["users"] = len(sample)
    record["evaluation_cells_per_s_1_thread"] = round(len(sample) * ds.n_items
                                                      / record["stages"]["evaluation_1_thread"]["wall_s"])


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


# ---- sequential training: probes in child processes -------------------------------------------------


def probe(ds_dir: str, family: str, loss: str, steps: int, batch: int = BATCH) -> dict:
    """(In a child process.) Train `family` with `loss` for `steps` optimizer steps (0 = one whole epoch)
    on the saved dataset, without validation; s/step from the loop's own clock, peak RSS of this process."""
    ds = Dataset.load(ds_dir)
    cls, config_cls = SEQUENTIAL[family]
    config = build_config(config_cls, {"loss": loss, "max_steps": steps, "epochs": 1, "patience": 0,
                                       "batch_size": batch, "device": "cpu"})
    wall, cpu = time.perf_counter(), time.process_time()
    model = cls(config).fit(ds)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    report = model.fit_report()
    done = max(report["steps"], 1)
    windows = SequenceWindows(ds.sequences(), config.max_len, config.window_stride or max(1, config.max_len // 2))
    per_epoch = math.ceil(len(windows) / report["batch_size"])
    s_per_step = report["train_seconds"] / done
    return {"loss": report["loss"], "loss_reason": report["loss_reason"], "steps": report["steps"],
            "batch_size": report["batch_size"], "steps_per_epoch": per_epoch, "s_per_step": round(s_per_step, 4),
            "cpu_s_per_step": round(report["cpu_seconds"] / done, 4),
            "epoch_s": round(s_per_step * per_epoch, 1) if steps else round(report["train_seconds"], 1),
            "epoch_cpu_s": round(report["cpu_seconds"] / done * per_epoch, 1) if steps else round(report["cpu_seconds"], 1),
            "epoch_measured": "one whole epoch" if not steps else f"estimate: s/step over {report['steps']} steps",
            "fit_wall_s": round(fit_wall, 2), "fit_cpu_s": round(fit_cpu, 2), "threads": torch.get_num_threads(),
            "peak_rss_mb": round(peak_mb(), 1), "load_avg_1m_end": round(os.getloadavg()[0], 2)}


def run_probe(ds_dir: str, family: str, loss: str, steps: int, threads: int, batch: int = BATCH) -> dict:
    """`probe` in a fresh process (its own peak RSS); a failure (the planner's ResourceError, an OOM kill)
    comes back as {"skipped": why}."""
    cmd = [sys.executable, __file__, "--probe", ds_dir, "--family", family, "--loss", loss, "--steps", str(steps),
           "--batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        why = "killed (out of memory?)" if done.returncode < 0 else tail
        return {"skipped": f"{family} {loss}: {why}"[:300]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{family} {loss}: {out}", file=sys.stderr, flush=True)
    return out


def stage_sequential(ds_dir: str, family: str, record: dict, args: argparse.Namespace) -> None:
    """`<family>_epoch_s`: the sampled loss's epoch ("s") beside the full softmax's estimate ("full_ce_s")."""
    sampled = run_probe(ds_dir, family, "sampled", args.seq_steps, args.threads)
    full = run_probe(ds_dir, family, "ce", args.ce_steps, args.threads)
    if family == "sasrec" and sampled.get("epoch_s", math.inf) <= args.epoch_budget_s:
        sampled = run_probe(ds_dir, family, "sampled", 0, args.threads)  # total_s counts a real epoch
    record["stages"][family] = {"sampled": sampled, "ce": full}
    record[f"{family}_epoch_s"] = {"s": sampled.get("epoch_s"), "loss": "sampled", "full_ce_s": full.get("epoch_s"),
                                   "measured": sampled.get("epoch_measured", sampled.get("skipped")),
                                   "s_per_step": sampled.get("s_per_step"), "full_ce_s_per_step": full.get("s_per_step"),
                                   "cpu_s": sampled.get("epoch_cpu_s"), "full_ce_cpu_s": full.get("epoch_cpu_s"),
                                   "batch_size": sampled.get("batch_size"), "full_ce_batch_size": full.get("batch_size"),
                                   "peak_rss_mb": sampled.get("peak_rss_mb"), "full_ce_peak_rss_mb": full.get("peak_rss_mb"),
                                   "load_avg_1m": sampled.get("load_avg_1m_end")}
    for loss, part in (("sampled", sampled), ("ce", full)):
        if "skipped" in part:
            record["skipped"][f"{family}:{loss}"] = part["skipped"]


# ---- what fits here ------------------------------------------------------------------------------


def stage_memory_mb(stage: str, rows: int, n_items: int) -> float:
    """Rough peak MB a stage needs beyond the dataset (0: bounded by design or small)."""
    if stage == "ingest":
        return rows * INGEST_BYTES_PER_ROW / 2**20
    if stage in ("itemknn", "topk", "shap"):
        return ItemKNNConfig().memory_budget_mb + rows * 3 * 12 / 2**20  # co-occurrence blocks + matrices
    if stage in SEQUENTIAL:
        cls, config_cls = SEQUENTIAL[stage]
        model = cls(build_config(config_cls, {"loss": "sampled", "batch_size": BATCH}))
        return model.training_memory(n_items) / 2**20 + rows * 16 / 2**20
    return 0.0


def memory_skips(stages: set[str], rows: int, n_items: int) -> dict[str, str]:
    """{stage: why} for stages whose estimate exceeds 85% of the memory available now."""
    budget = 0.85 * psutil.virtual_memory().available / 2**20
    out = {}
    for stage in sorted(stages):
        need = stage_memory_mb(stage, rows, n_items)
        if need > budget:
            out[stage] = f"needs ~{need:,.0f} MB, {budget:,.0f} MB available here"
    return out


def run(size: str, stages: set[str], seed: int, sasrec_steps: int = 30,
        args: argparse.Namespace | None = None) -> dict:
    rows, n_items = SIZES[size]
    record: dict = {"size": size, "rows": rows, "items_requested": n_items, "seed": seed, "stages": {},
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
                    "date": dt.date.today().isoformat(), "skipped": memory_skips(stages, rows, n_items),
                    "not_requested": sorted(set(STAGES) - stages)}
    if "ingest" in record["skipped"]:
        return record
    stages = stages - set(record["skipped"])
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
    if stages & set(SEQUENTIAL):
        record["loss_auto"] = SASRec().loss_choice(ds.n_items).reason
        with tempfile.TemporaryDirectory(prefix="scale-ds-") as folder:
            ds.save(folder)
            for family in SEQUENTIAL:
                if family in stages:
                    stage_sequential(folder, family, record, args)
    record["peak_mem_mb"] = round(peak_mb(), 1)  # this process; the training children's are in their stages
    record["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    record |= total_seconds(record)
    return record


def total_seconds(record: dict) -> dict:
    """total_s = ingest + item-kNN fit + one sampled SASRec+ epoch + full evaluation, when all four ran."""
    parts = {"ingest": record.get("ingest_s"), "itemknn_fit": record.get("itemknn_fit_s"),
             "sasrec_sampled_epoch": (record.get("sasrec_epoch_s") or {}).get("s"),
             "evaluation": record["stages"].get("evaluation", {}).get("wall_s")}
    missing = sorted(k for k, v in parts.items() if v is None)
    if missing:
        return {"total_s": None, "total_missing": missing}
    return {"total_s": round(sum(parts.values()), 1), "total_parts_s": parts,
            "total_epoch_measured": record["sasrec_epoch_s"]["measured"]}


# ---- how loss="auto" was calibrated ---------------------------------------------------------------


def full_length_dataset(n_items: int, n_users: int, length: int, seed: int = 0) -> Dataset:
    """Every user `length` items: every batch is full width, so only the catalogue varies. Each item occurs at
    least once (the catalogue is all `n_items`), the other draws follow Zipf popularity."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    rest = rng.choice(n_items, size=max(0, n_users * length - n_items), p=popularity / popularity.sum())
    items = rng.permutation(np.concatenate([np.arange(n_items), rest]))[:n_users * length]
    frame = pd.DataFrame({"user": np.repeat(np.arange(n_users), length).astype(str), "item": items.astype(str),
                          "timestamp": np.tile(np.arange(length), n_users)})
    return build_dataset(frame, name=f"full-length-{n_items}")


def loss_sweep(sizes: list[int], threads: int, steps: int, ce_max_gb: float) -> dict:
    """s/step and peak RSS of ce vs sampled for both families over catalogue sizes, batch 128 (ce at batch 32
    too, and only there when its estimated memory passes `ce_max_gb`, so the sweep cannot exhaust RAM)."""
    out = {"threads": threads, "steps": steps, "batch": BATCH, "sequence_length": 100,
           "load_avg_start": [round(x, 2) for x in os.getloadavg()], "date": dt.date.today().isoformat(), "runs": []}
    for n_items in sizes:
        ds = full_length_dataset(n_items, n_users=10 * BATCH, length=100)
        with tempfile.TemporaryDirectory(prefix="sweep-ds-") as folder:
            ds.save(folder)
            for family, (cls, config_cls) in SEQUENTIAL.items():
                ce_gb = cls(build_config(config_cls, {"loss": "ce"})).training_memory(ds.n_items) / 2**30
                plan = [("sampled", BATCH), ("ce", 32)] + ([("ce", BATCH)] if ce_gb <= ce_max_gb else [])
                for loss, batch in plan:
                    result = run_probe(folder, family, loss, steps, threads, batch)
                    out["runs"].append({"family": family, "n_items": ds.n_items, "loss": loss, "batch": batch,
                                        **{k: result.get(k) for k in ("s_per_step", "cpu_s_per_step", "batch_size",
                                                                      "peak_rss_mb", "load_avg_1m_end", "skipped")}})
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="1m")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--sasrec-steps", type=int, default=30, help="training steps of the SASRec+ explained by SHAP")
    parser.add_argument("--seq-steps", type=int, default=20, help="steps timed with the sampled loss per family")
    parser.add_argument("--ce-steps", type=int, default=3, help="steps timed with the full softmax per family")
    parser.add_argument("--epoch-budget-s", type=float, default=1800.0,
                        help="train one real sampled SASRec+ epoch when its estimate is within this many seconds")
    parser.add_argument("--loss-sweep", default="", help="comma-separated catalogue sizes: time ce vs sampled only")
    parser.add_argument("--ce-max-gb", type=float, default=6.0, help="--loss-sweep: largest ce run at batch 128")
    parser.add_argument("--probe", default="", help=argparse.SUPPRESS)  # child mode: a saved dataset folder
    parser.add_argument("--family", default="sasrec", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="sampled", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help="output file (default bench/results/scale-<size>-<date>.json)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args.family, args.loss, args.steps, args.batch)))
        return
    if args.loss_sweep:
        record = loss_sweep([int(x) for x in args.loss_sweep.split(",")], args.threads, args.seq_steps, args.ce_max_gb)
        name = f"loss-sweep-{dt.date.today():%Y%m%d}.json"
    else:
        stages = {s for s in args.stages.split(",") if s}
        unknown = stages - set(STAGES)
        if unknown:
            parser.error(f"unknown stages {sorted(unknown)}")
        record = run(args.size, stages, args.seed, args.sasrec_steps, args)
        name = f"scale-{args.size}-{dt.date.today():%Y%m%d}.json"
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_write:
        out = Path(args.out) if args.out else ROOT / "bench" / "results" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
