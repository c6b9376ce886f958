"""Ingestion benchmark: read + validate + build a Dataset, timed and memory-measured per run.

Each run is a fresh subprocess, so peak RSS (what a user's machine feels) of one run never mixes
with another's. Datasets: MovieLens 100K from ../shared/data (skipped when absent) and generated
CSVs of 1M and 10M rows shaped like MovieLens (header user,item,rating,timestamp; popular items
and heavy users; a few repeated pairs that the default keep_last policy drops).

    python bench/ingest.py                      # ml-100k, 1m (3 runs each), 10m (1 run)
    python bench/ingest.py --only 1m --runs 5
    python bench/ingest.py --profile 1m         # cProfile of one in-process load
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
SIZES = {"1m": 1_000_000, "10m": 10_000_000}
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder


def generate_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A MovieLens-shaped ratings CSV: ~150 ratings per user, Zipf-like item popularity."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    n_users = max(rows // 150, 10)
    n_items = max(int(4 * rows ** 0.5), 100)
    activity = rng.lognormal(0, 1, n_users)
    users = rng.choice(n_users, size=rows, p=activity / activity.sum()) + 1
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.permutation(n_items)[rng.choice(n_items, size=rows, p=popularity / popularity.sum())] + 1
    ratings = rng.choice(np.arange(1, 6), size=rows, p=[0.06, 0.11, 0.27, 0.35, 0.21])
    stamps = rng.integers(946_684_800, 1_072_915_200, size=rows)  # 2000..2003
    table = pa.table({"user": users, "item": items, "rating": ratings, "timestamp": stamps})
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="none"))
    return path


def worker(path: str, items: str | None) -> None:
    """One measured load, in this (fresh) process; prints one JSON line."""
    import resource

    import psutil

    from recsys_core.data import load_dataset

    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    ds, report = load_dataset(path, items=items)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"seconds": seconds, "rows_read": report.rows_read, "rows_kept": ds.n_interactions,
                      "users": ds.n_users, "items": ds.n_items, "peak_mem_mb": peak / 2**20,
                      "rss_after_imports_mb": base / 2**20}))


def measure(path: Path, items: Path | None, runs: int) -> dict:
    results = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--worker", str(path)] + (["--items", str(items)] if items else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in results)
    rows = results[0]["rows_read"]
    return {"rows": rows, "seconds_median": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "peak_mem_mb": round(statistics.median(r["peak_mem_mb"] for r in results), 1),
            "rss_after_imports_mb": round(statistics.median(r["rss_after_imports_mb"] for r in results), 1),
            "file_mb": round(path.stat().st_size / 2**20, 1), "runs": results}


def _context() -> dict:
    return {"device": "cpu", "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()]}


def run(only: list[str], runs: int, runs_10m: int, write: bool) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            ctx = _context()
            if name == "ml-100k":
                data = SHARED / "ml-100k"
                if not (data / "u.data").exists():
                    print(f"skip ml-100k: {data} not found", file=sys.stderr)
                    continue
                res = measure(data / "u.data", data / "u.item", runs)
            else:
                t0 = time.perf_counter()
                path = generate_csv(Path(tmp) / f"ratings-{name}.csv", SIZES[name])
                ctx["generate_seconds"] = round(time.perf_counter() - t0, 1)
                res = measure(path, None, runs_10m if name == "10m" else runs)
                path.unlink()
            res |= ctx | {"load_avg_after": [round(x, 2) for x in os.getloadavg()],
                          "dataset": name if name == "ml-100k" else f"synthetic-{name}"}
            out[res["dataset"]] = res
            if write:
                RESULTS.mkdir(parents=True, exist_ok=True)
                stamp = dt.date.today().strftime("%Y%m%d")
                (RESULTS / f"ingest-{res['dataset']}-{stamp}.json").write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps({k: v for k, v in res.items() if k != "runs"}), file=sys.stderr)
    return out


def profile(name: str) -> None:
    import cProfile
    import pstats

    from recsys_core.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = generate_csv(Path(tmp) / "r.csv", SIZES[name]) if name in SIZES else SHARED / "ml-100k" / "u.data"
        prof = cProfile.Profile()
        prof.runcall(load_dataset, path)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--items", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="ml-100k,1m,10m", help="comma list of ml-100k, 1m, 10m")
    ap.add_argument("--runs", type=int, default=3, help="runs per dataset (median is reported)")
    ap.add_argument("--runs-10m", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/*.json")
    ap.add_argument("--profile", choices=["ml-100k", *SIZES], help="cProfile one in-process load instead")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.items)
    elif args.profile:
        profile(args.profile)
    else:
        result = run(args.only.split(","), args.runs, args.runs_10m, not args.no_write)
        print(json.dumps({k: {m: v for m, v in r.items() if m != "runs"} for k, r in result.items()}, indent=2))


if __name__ == "__main__":
    main()
