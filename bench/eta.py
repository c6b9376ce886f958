"""Does the Train page's expected time hold? Estimate vs actual for the page's defaults, as JSON.

    python bench/eta.py                                          # every family on demo, ml-100k and a counts file
    python bench/eta.py --datasets demo --models sasrec,ease     # a subset

For each dataset and family: the page's CPU profile (`profile_for("cpu")`, the text tower in fine-tune mode), the
estimate the form shows (`estimate_training`, measured in this process on the job's thread count, as the server
measures it), then the run itself as the page starts it: a training job (`TrainingJob`, its own process, niced,
one thread) on a temporary workspace. The actual CPU seconds are the job process's own (getrusage of the reaped
child: start-up, loading, training, evaluation, saving); the wall seconds are from start to recorded end.

Datasets: the demo; ML-100k from ../shared/data/ml-100k (skipped when absent); a generated timestamp-less counts
file (3,000 users, 1,500 items, ~60k rows of `user,item,plays`; the order-aware models are refused there, and
recorded as such). Families without an estimate (no training loop, or reading item texts) are recorded with
their actual times only and do not count in the shares.

The JSON (printed, and written to bench/results/eta-<YYYYMMDD>.json): one row per run, and
`within_range_share` (actual CPU seconds within [lower, upper] of the estimate), `upper_over_actual_max` (the
upper end over the actual CPU seconds, the worst run), the same two for wall seconds at the load measured, and
the 1-minute load average before and after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.data.load import load_dataset
from recsys_core.data.resolve import resolve_dataset
from recsys_core.errors import RecsysError
from recsys_core.models.profiles import can_estimate, estimate_training, profile_for
from recsys_core.threads import cores, training_threads, use_threads
from recsys_core.training.experiment import check_order, make_model, make_split
from recsys_core.training.jobs import TrainingJob
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

FAMILIES = ["bert4rec", "sasrec", "hybrid", "text_tower", "ease", "itemknn", "popularity", "blend"]
DATASETS = ["demo", "ml-100k", "counts"]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
EXTRA = {"text_tower": {"mode": "fine_tune"}}  # the trainable text tower; zero-shot is one pass


def load() -> float:
    return round(os.getloadavg()[0], 2)


def counts_file(folder: Path) -> Path:
    """A seeded play-count file without timestamps: Zipf-popular items, whole-number plays."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(3000), rng.integers(5, 36, 3000))
    items = np.minimum(rng.zipf(1.3, len(users)), 1500) - 1
    frame = pd.DataFrame({"user": users, "item": items, "plays": rng.integers(1, 200, len(users))})
    path = folder / "plays.csv"
    frame.drop_duplicates(["user", "item"]).to_csv(path, index=False)
    return path


def dataset(name: str, scratch: Path):
    if name == "counts":
        return load_dataset(str(counts_file(scratch)), name="counts")[0]
    if name == "ml-100k":
        return resolve_dataset(str(ML100K), None) if ML100K.is_dir() else None
    return resolve_dataset(name, None)


def _rounded(value):
    """Floats to 3 decimals, inside dicts, lists and tuples too."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return round(value, 3) if isinstance(value, float) else value


def run_one(store: JobStore, ds, saved: str, family: str) -> dict:
    overrides = {**profile_for("cpu").overrides(family), **EXTRA.get(family, {})}
    row = {"dataset": saved, "model": family, "overrides": overrides}
    try:
        check_order(make_model(family, overrides), ds)
    except RecsysError as err:
        return {**row, "refused": str(err).splitlines()[0]}
    row["load_before"] = load()
    if can_estimate(family, overrides):
        t0 = time.process_time()
        est = estimate_training(ds, family, overrides, make_split(ds))
        row["estimate"] = _rounded(dataclasses.asdict(est))  # a blend's parts: their own estimates, nested
        row["estimate_cpu_s"] = round(time.process_time() - t0, 2)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    job = TrainingJob.start(store, saved, family, overrides)
    job.join()
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = job.record()
    row.update(status=record.status, error=record.error or None, load_after=load(), actual_wall_s=round(wall, 2),
               actual_cpu_s=round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 2))
    result = record.result or {}
    row["run"] = {k: result.get(k) for k in ("cpu_s", "train_s", "stop_reason", "stopped", "epochs_run", "steps",
                                             "best_epoch", "under_trained", "needs_cpu_s", "metrics")}
    if "estimate" in row:
        est = row["estimate"]
        row["cpu_within"] = est["lower_cpu_s"] <= row["actual_cpu_s"] <= est["upper_cpu_s"]
        row["wall_within"] = est["lower_s"] <= row["actual_wall_s"] <= est["upper_s"]
        row["upper_over_actual"] = round(est["upper_cpu_s"] / row["actual_cpu_s"], 3)
        row["wall_upper_over_actual"] = round(est["upper_s"] / row["actual_wall_s"], 3)
    print(json.dumps({k: row.get(k) for k in ("dataset", "model", "status", "actual_cpu_s", "actual_wall_s",
                                              "cpu_within", "upper_over_actual", "load_after")}), file=sys.stderr)
    return row


def summary(rows: list[dict]) -> dict:
    timed = [r for r in rows if "cpu_within" in r and r.get("status") == "finished"]
    if not timed:
        return {"estimated_runs": 0}
    return {"estimated_runs": len(timed),
            "within_range_share": round(float(np.mean([r["cpu_within"] for r in timed])), 3),
            "upper_over_actual_max": max(r["upper_over_actual"] for r in timed),
            "upper_over_actual_min": min(r["upper_over_actual"] for r in timed),
            "wall_within_range_share": round(float(np.mean([r["wall_within"] for r in timed])), 3),
            "wall_upper_over_actual_max": max(r["wall_upper_over_actual"] for r in timed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="demo, ml-100k, counts (comma-separated)")
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--repeats", type=int, default=1, help="runs of each model on each dataset (loads differ)")
    p.add_argument("--out", default=None, help="default: bench/results/eta-<YYYYMMDD>.json")
    args = p.parse_args()
    use_threads(training_threads())  # the probe runs on the job's thread count, as it does in the server
    started = dt.datetime.now(dt.UTC)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        store = JobStore(Workspace(Path(scratch) / "ws"))
        for name in args.datasets.split(","):
            ds = dataset(name, Path(scratch))
            if ds is None:
                rows.append({"dataset": name, "skipped": f"{ML100K} not found"})
                continue
            store.workspace.save_dataset(ds, name=name)
            rows += [run_one(store, ds, name, family) for family in args.models.split(",")
                     for _ in range(args.repeats)]
    out = {"bench": "eta", "date": started.isoformat(timespec="seconds"), "cores": cores(),
           "training_threads": training_threads(), "profile": profile_for("cpu").name,
           "command": " ".join([Path(sys.executable).name, *sys.argv]), **summary(rows), "runs": rows}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"eta-{started:%Y%m%d}.json"
    path.write_text(text + "\n")


if __name__ == "__main__":
    main()
