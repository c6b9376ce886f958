"""Embedding-map benchmark: PCA, UMAP and t-SNE on 10,000 structured vectors and on a real model.

Goal: 10,000 items mapped with PCA in under 1 s and with UMAP in under 60 s on the CPU. Each
(dataset, method) runs in a fresh subprocess, so the first call pays what a fresh app process
pays (imports; numba JIT for UMAP) and peak RSS of one method never mixes with another's. The
first call is reported apart from the warm calls (median of `--runs`; t-SNE has no JIT, so its
first call counts towards a median of 3: `all_runs_median_s`). For UMAP the worker also
measures how long the main thread is starved while a `ProjectionJob` runs in the background
(what the Streamlit server feels: numba holds the GIL inside its kernels).

Datasets: `synthetic-10k` (10,000 x 64 vectors in 20 Gaussian clusters) and `ml-100k` (item
embeddings of EASE, or `--family`, trained on MovieLens 100K from ../shared/data; skipped if absent).

    python bench/project.py                           # both datasets, all methods, 3 warm runs
    python bench/project.py --only synthetic-10k --methods pca umap
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
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder


def synthetic(n: int = 10_000, dim: int = 64, clusters: int = 20, seed: int = 0):
    """Random but structured: Gaussian clusters of unequal size, like genres in a catalogue."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    sizes = rng.dirichlet(np.ones(clusters) * 2)
    labels = rng.choice(clusters, size=n, p=sizes)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)


def real_model_embeddings(family: str):
    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.training.experiment import run_experiment

    ds = resolve_dataset(str(SHARED / "ml-100k"), None)
    result = run_experiment(ds, family)
    return result.model.item_embeddings(), {"family": family, "ndcg@10": round(result.metrics["ndcg@10"], 4)}


def _stall_probe(job, tick_s: float = 0.01) -> float:
    """Longest gap (s) between wake-ups of a 10 ms sleep loop on the main thread while `job` runs."""
    worst, last = 0.0, time.perf_counter()
    while job.running:
        time.sleep(tick_s)
        now = time.perf_counter()
        worst, last = max(worst, now - last - tick_s), now
    return worst


def worker(path: str, method: str, runs: int) -> None:
    """First call + `runs` warm calls of one method in this fresh process; prints one JSON line."""
    import resource

    import numpy as np
    import psutil

    from recsys_core.insight import project as P

    vectors = np.load(path)
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    first = P.project(vectors, method=method, use_cache=False)
    first_s = time.perf_counter() - t0
    warm = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = P.project(vectors, method=method, use_cache=False)
        warm.append({"total_s": time.perf_counter() - t0, "projection_s": res.seconds, "trust_s": res.trust_seconds})
    out = {"n": len(vectors), "dim": vectors.shape[1], "first_call_s": first_s, "first_projection_s": first.seconds,
           "warm_runs": warm, "trustworthiness": first.trustworthiness, "trust_sample": first.trust_sample,
           "explained_variance": first.explained_variance,
           "deterministic": bool(np.array_equal(first.coords, res.coords)) if runs else None}
    if method == "umap":
        job = P.ProjectionJob(vectors, P.ProjectionParams(method=method, seed=1)).start()
        out["background_main_thread_max_stall_s"] = _stall_probe(job)
        out["background_state"] = job.state
    out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    out["rss_after_imports_mb"] = base / 2**20
    print(json.dumps(out))


def measure(path: Path, method: str, runs: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(path), "--method", method, "--runs", str(runs)]
    load_before = [round(x, 2) for x in os.getloadavg()]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    warm = [r["total_s"] for r in res["warm_runs"]]
    summary = {
        "first_call_s": round(res["first_call_s"], 3),
        "warm_median_s": round(statistics.median(warm), 3) if warm else None,
        "warm_projection_median_s": round(statistics.median(r["projection_s"] for r in res["warm_runs"]), 3)
        if warm else None,
        "all_runs_median_s": round(statistics.median([res["first_call_s"], *warm]), 3),
        "trust_median_s": round(statistics.median(r["trust_s"] for r in res["warm_runs"]), 3) if warm else None,
        "trustworthiness": round(res["trustworthiness"], 4),
        "peak_mem_mb": round(res["peak_mem_mb"], 1),
        "rss_after_imports_mb": round(res["rss_after_imports_mb"], 1),
        "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    return summary | {k: v for k, v in res.items() if k not in summary and k not in {"first_call_s"}}


def run(only: list[str], methods: list[str], runs: int, tsne_runs: int, family: str, write: bool) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            import numpy as np

            meta: dict = {}
            if name == "ml-100k":
                if not (SHARED / "ml-100k" / "u.data").exists():
                    print(f"skip ml-100k: {SHARED / 'ml-100k'} not found", file=sys.stderr)
                    continue
                vectors, meta = real_model_embeddings(family)
            else:
                vectors = synthetic()
                meta = {"generator": "20 Gaussian clusters, 64-d, seed 0"}
            path = Path(tmp) / f"{name}.npy"
            np.save(path, vectors)
            result = {"dataset": name, "n": len(vectors), "dim": int(vectors.shape[1]), **meta,
                      "device": "cpu", "cpus": os.cpu_count(), "python": platform.python_version(),
                      "date": dt.date.today().isoformat(), "methods": {}}
            for method in methods:
                print(f"{name} {method} ...", file=sys.stderr, flush=True)
                result["methods"][method] = measure(path, method, tsne_runs if method == "tsne" else runs)
                print(json.dumps({k: v for k, v in result["methods"][method].items() if k != "warm_runs"}),
                      file=sys.stderr, flush=True)
            result["goals"] = _goals(result)
            out[name] = result
            if write:
                RESULTS.mkdir(parents=True, exist_ok=True)
                stamp = dt.date.today().strftime("%Y%m%d")
                (RESULTS / f"project-{name}-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return out


def _goals(result: dict) -> dict:
    m = result["methods"]
    goals = {}
    if "pca" in m:
        goals["pca_under_1s_warm"] = m["pca"]["warm_median_s"] is not None and m["pca"]["warm_median_s"] < 1.0
    if "umap" in m:
        goals["umap_under_60s_warm"] = m["umap"]["warm_median_s"] is not None and m["umap"]["warm_median_s"] < 60
        goals["umap_under_60s_first_call"] = m["umap"]["first_call_s"] < 60
    return goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["synthetic-10k", "ml-100k"], choices=["synthetic-10k", "ml-100k"])
    ap.add_argument("--methods", nargs="+", default=["pca", "umap", "tsne"], choices=["pca", "umap", "tsne"])
    ap.add_argument("--runs", type=int, default=3, help="warm runs after the first call (median reported)")
    ap.add_argument("--tsne-runs", type=int, default=2,
                    help="warm t-SNE runs (no JIT, so first call + 2 = a median of 3; ~4 min each at 10k on 2 cores)")
    ap.add_argument("--family", default="ease", help="model whose item embeddings are mapped on ml-100k")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.method, args.runs)
        return
    run(args.only, args.methods, args.runs, args.tsne_runs, args.family, write=not args.no_write)


if __name__ == "__main__":
    main()
