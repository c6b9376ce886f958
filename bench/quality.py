"""Full-ranking leave-one-out quality of every model on one dataset, as JSON.

    python bench/quality.py --dataset ../shared/data/ml-100k
    python bench/quality.py --dataset demo                  # small profile, ~6 minutes on CPU
    python bench/quality.py --dataset ../shared/data/ml-1m --models ease,bert4rec,sasrec

Each model runs in a fresh subprocess so its peak memory is its own. Rows carry NDCG@10, HR@10,
training wall time, device, peak memory, and the validation curve (NDCG@10 against seconds).
The JSON is printed and written to bench/results/quality-<dataset>-<YYYYMMDD>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.data.dataset import TIE_RULE

# Benchmark name -> (model family, hyperparameter overrides). Profiles tighten budgets for a live demo.
VARIANTS = {
    "popularity": ("popularity", {}),
    "itemknn": ("itemknn", {}),
    # Recency-weighted item-kNN: a sequence-aware baseline, so the transformers face a fair yardstick.
    "itemknn_recency": ("itemknn", {"recency_half_life": 5}),
    "ease": ("ease", {}),
    "bert4rec": ("bert4rec", {}),
    "sasrec": ("sasrec", {}),
    "text_tower_zero_shot": ("text_tower", {"mode": "zero_shot"}),
    "text_tower_fine_tuned": ("text_tower", {"mode": "fine_tune"}),
    "hybrid": ("hybrid", {}),
}
BASELINES = ("ease", "itemknn", "itemknn_recency")
# Trained from random initialisations: run once per seed and reported as mean ± std. The others are
# deterministic given the split, so one run says everything.
SEEDED = ("bert4rec", "sasrec", "hybrid", "text_tower_fine_tuned")
METRICS = ("ndcg@10", "hr@10", "ndcg@20", "recall@20", "mrr@10", "coverage@10", "pop_bias@10")
PROFILES: dict[str, dict[str, dict]] = {
    # MovieLens-sized data: the models' own defaults (tuned on ML-100k validation), early stopping on
    # validation NDCG@10, with a safety cap of 1,800 CPU seconds per model (about 15 minutes on 2 idle cores;
    # CPU seconds, so a busy machine trains the same model, only slower).
    "full": {"bert4rec": {"cpu_budget_s": 1800}, "sasrec": {"cpu_budget_s": 1800}, "hybrid": {"cpu_budget_s": 1800}},
    # The demo: the sequential models run with exactly the defaults a user gets on the Train page (early
    # stopping, no wall-clock budget: a budget made a busy machine's numbers meaningless); only the
    # text tower's fine-tuning is cut short. About 6 minutes on an idle 2-core CPU, all models together.
    "small": {
        "text_tower_fine_tuned": {"max_steps": 15, "eval_every": 1},
    },
}


def dataset_label(spec: str) -> str:
    path = Path(spec)
    return path.name if path.exists() else spec


def run_worker(args: argparse.Namespace) -> dict:
    """Train and evaluate one variant in this process; return its row."""
    import torch

    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.progress import Progress
    from recsys_core.training.experiment import run_experiment
    from recsys_core.workspace.registry import Workspace

    family, overrides = VARIANTS[args.model]
    overrides = {**overrides, **PROFILES[args.profile].get(args.model, {}), **json.loads(args.overrides)}
    if args.model in SEEDED:
        overrides["seed"] = args.seed
    ds = resolve_dataset(args.dataset, Workspace())  # 'demo', a saved dataset's name, a file or a folder
    progress = Progress()
    start = time.perf_counter()
    result = run_experiment(ds, family, overrides, progress=progress)
    total_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    curve = [[round(e.elapsed_s, 1), round(e.metrics["ndcg@10"], 4)] for e in progress.snapshot()
             if "ndcg@10" in e.metrics]
    m = result.metrics
    return {
        "model": args.model, "family": family, "seed": args.seed if args.model in SEEDED else None,
        **{k: m.get(k) for k in METRICS}, "cpu_s": round(result.cpu_s, 1), **result.extra,
        "train_s": round(result.train_s, 2), "total_s": round(total_s, 2), "device": result.device,
        "peak_mem_mb": round(peak_mb, 1), "gpu_peak_mem_mb": gpu_peak and round(gpu_peak, 1),
        "status": result.status, "curve": curve, "overrides": overrides,
        "users": m.get("users"), "dataset": {"users": ds.n_users, "items": ds.n_items,
                                              "interactions": ds.n_interactions},
    }


def run_all(args: argparse.Namespace) -> dict:
    rows = []
    for name in args.models.split(","):
        runs = [_run_worker(args, name, seed) for seed in (args.seeds if name in SEEDED else [0])]
        rows.append(_combine(name, runs))
        print(f"[quality] {name}: ndcg@10={rows[-1].get('ndcg@10')} ± {rows[-1].get('ndcg@10_std')}",
              file=sys.stderr, flush=True)
    return summarise(rows, args)


def _run_worker(args: argparse.Namespace, name: str, seed: int) -> dict:
    """One variant and seed in a fresh process, so its peak memory is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out_path = tmp.name
    cmd = [sys.executable, __file__, "--worker", "--dataset", args.dataset, "--model", name, "--seed", str(seed),
           "--profile", args.profile, "--overrides", args.overrides, "--out", out_path]
    print(f"[quality] {name} (seed {seed}) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, check=False, stdout=sys.stderr)
    if proc.returncode != 0:
        return {"model": name, "seed": seed, "error": f"worker exited with {proc.returncode}"}
    row = json.loads(Path(out_path).read_text())
    os.unlink(out_path)
    return row


def _combine(name: str, runs: list[dict]) -> dict:
    """One row per variant: each metric as the mean over seeds, with its std and the runs themselves."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"model": name, "error": runs[0]["error"]}
    row = {**ok[0], "seeds": [r["seed"] for r in ok], "runs": runs if len(runs) > 1 else None}
    for key in (*METRICS, "train_s", "cpu_s"):
        values = np.array([r[key] for r in ok if r.get(key) is not None], dtype=float)
        if len(values):
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row


def summarise(rows: list[dict], args: argparse.Namespace) -> dict:
    ok = {r["model"]: r for r in rows if "error" not in r}
    best_baseline = max((ok[m]["ndcg@10"] for m in BASELINES if m in ok), default=None)
    ratios = {m: round(ok[m]["ndcg@10"] / best_baseline, 3) for m in ok if best_baseline}
    return {
        "benchmark": "quality", "dataset": dataset_label(args.dataset), "split": "leave_one_out",
        "protocol": "full ranking over all items, seen items excluded, pessimistic ties",
        "tie_rule": TIE_RULE, "seeds": args.seeds,
        "profile": args.profile, "date": dt.date.today().isoformat(), "results": rows,
        "wall_s": round(time.perf_counter() - args.started, 1), "load_avg_end": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "ndcg@10_ratio_to_best_baseline": ratios, "baselines": list(BASELINES),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="'demo', a workspace dataset name, or a file/MovieLens folder")
    p.add_argument("--models", default=",".join(VARIANTS))
    p.add_argument("--profile", default=None, choices=sorted(PROFILES), help="default: small for demo, else full")
    p.add_argument("--overrides", default="{}", help="JSON of extra hyperparameters for every model")
    p.add_argument("--seeds", default="0,1,2", help="seeds for the trained (non-deterministic) models")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.profile = args.profile or ("small" if args.dataset == "demo" else "full")
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.started = time.perf_counter()
    if args.worker:
        Path(args.out).write_text(json.dumps(run_worker(args)))
        return
    report = run_all(args)
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_write:
        stamp = dt.date.today().strftime("%Y%m%d")
        out = ROOT / "bench" / "results" / f"quality-{report['dataset']}-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"[quality] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
