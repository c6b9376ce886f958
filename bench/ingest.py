"""Ingestion benchmark at scale: a ratings CSV file of 1M, 5M or 20M rows -> `load_dataset` -> Dataset.

Data comes from `bench.scale.generate` (seeded Zipf item popularity, lognormal user activity, random
timestamps; the issue-13 sizes 1M/20k items, 5M/100k, 20M/500k) plus a seeded 1-5 rating, written once
as CSV (`user,item,rating,timestamp`) to a cache folder. Each measured load is a fresh subprocess, so its
peak RSS is its own; it records wall seconds, CPU seconds (user+sys of the process and its children),
peak RSS, the load average at start and end, and a digest of the built Dataset, so the code before and
after a change can be checked to build the same thing.

    python bench/ingest.py --size 1m                       # current tree, result under "after"
    python bench/ingest.py --size 1m --src /tmp/base --label before   # another source tree
    python bench/ingest.py --size 5m --profile             # cProfile of one in-process load

Results merge into bench/results/ingest-<size>-<YYYYMMDD>.json keyed by label. The machine is
shared: read wall seconds against the recorded load, CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("RECSYS_BENCH_CACHE", "/tmp/recsys-ingest-bench"))
SIZES = {"1m": (1_000_000, 20_000), "5m": (5_000_000, 100_000), "20m": (20_000_000, 500_000)}
NOTE = ("2 shared cores: wall seconds follow the load average recorded with each run (other sessions' jobs), "
        "so compare cpu_s (user+sys, all threads) and peak_rss_mb (VmHWM); digest equal = the same Dataset built")
if "--worker" not in sys.argv:  # a worker imports recsys_core from --src (its PYTHONPATH), not this checkout
    sys.path.insert(0, str(ROOT))


def data_file(size: str, seed: int = 0) -> Path:
    """The cached CSV for `size`, generated on first use."""
    path = CACHE / f"ratings-{size}-seed{seed}.csv"
    if path.exists():
        return path
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from bench.scale import generate

    rows, n_items = SIZES[size]
    frame = generate(rows, n_items, seed)
    rng = np.random.default_rng(seed + 1)
    rating = rng.choice(np.arange(1, 6, dtype=np.int8), size=rows, p=[0.06, 0.11, 0.27, 0.35, 0.21])
    table = pa.table({"user": frame["user"].to_numpy(), "item": frame["item"].to_numpy(), "rating": rating,
                      "timestamp": frame["timestamp"].to_numpy()})
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="none"))
    tmp.rename(path)
    return path


def digest(ds) -> str:
    """Identity of what was built: ids in index order and every interaction column."""
    h = hashlib.sha256()
    for ids in (ds.user_ids, ds.item_ids):
        h.update("\0".join(map(str, ids)).encode())
    for column in ds.interactions.columns:
        h.update(column.encode())
        h.update(ds.interactions[column].to_numpy().tobytes())
    return h.hexdigest()[:16]


def worker(path: str) -> None:
    """One measured load in this fresh process; prints one JSON line."""
    import resource

    from recsys_core.data import LoadOptions, load_dataset

    base_rss = _vm_hwm_mb()
    load_start = os.getloadavg()
    t0, c0 = time.perf_counter(), _cpu()
    ds, report = load_dataset(path, options=LoadOptions(max_bytes=8 << 30))
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    peak = _vm_hwm_mb()
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall_s": round(seconds, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak, 1),
                      "peak_rss_children_mb": round(child_peak, 1), "rss_after_imports_mb": round(base_rss, 1),
                      "load_avg_start": [round(x, 2) for x in load_start],
                      "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                      "rows_read": report.rows_read, "rows_kept": ds.n_interactions, "users": ds.n_users,
                      "items": ds.n_items, "order": ds.order, "digest": digest(ds)}))


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(size: str, src: Path, runs: int) -> dict:
    path = data_file(size)
    out = {"code": str(src), "git": _git(src), "file": path.name, "file_mb": round(path.stat().st_size / 2**20, 1),
           "rows": SIZES[size][0], "items_requested": SIZES[size][1], "cpus": os.cpu_count(),
           "python": platform.python_version(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "runs": []}
    for _ in range(runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=src, env={**os.environ, "PYTHONPATH": str(src)})
        if done.returncode:
            raise SystemExit(f"worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
        out["runs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
    best = min(out["runs"], key=lambda r: r["cpu_s"])
    out |= {k: best[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "digest")}
    return out


def _git(src: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, cwd=src)
    return done.stdout.strip() or "not a git checkout"


def write(size: str, label: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ingest-{size}-{dt.date.today():%Y%m%d}.json"
    record = json.loads(path.read_text()) if path.exists() else {"size": size, "benchmark": "bench/ingest.py"}
    record[label] = result
    record["note"] = NOTE
    if "before" in record and "after" in record:
        record["same_dataset"] = record["before"]["digest"] == record["after"]["digest"]
        record["speedup_wall"] = round(record["before"]["wall_s"] / record["after"]["wall_s"], 2)
        record["speedup_cpu"] = round(record["before"]["cpu_s"] / record["after"]["cpu_s"], 2)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def profile(size: str) -> None:
    import cProfile
    import pstats

    from recsys_core.data import LoadOptions, load_dataset

    prof = cProfile.Profile()
    prof.runcall(load_dataset, data_file(size), options=LoadOptions(max_bytes=8 << 30))
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), default="1m")
    ap.add_argument("--runs", type=int, default=1, help="runs (the one with least CPU is the headline)")
    ap.add_argument("--src", default=str(ROOT), help="source tree holding recsys_core (default: this checkout)")
    ap.add_argument("--label", default="after", help="key of this result in the JSON (e.g. before, after)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process load instead")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
    elif args.profile:
        profile(args.size)
    else:
        result = measure(args.size, Path(args.src).resolve(), args.runs)
        if not args.no_write:
            print(write(args.size, args.label, result), file=sys.stderr)
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
