"""Explanations on MovieLens-100k: faithfulness (deletion check), SHAP latency and top-K latency, as JSON.

    python bench/explain.py                                   # BERT4Rec trained for 180 s, 200 users
    python bench/explain.py --model ease                      # the EASE comparison
    python bench/explain.py --model-dir workspace/models/run-00003-bert4rec
    python bench/explain.py --set max_len=100 --set lr=0.002 --threads 1

For each of `--users` random users (histories of 1-200 items): top-10 with seen items excluded
(timed), then history SHAP of the top-1 item (timed, a fresh explanation each time), then the
deletion check: the item's score after deleting the k most positively attributed history items vs k
random ones (mean of 10 draws). deletion_ratio = mean top-k drop / mean random drop (> 1: the
attributions find the items the score depends on; None when random deletions do not lower the score
on average); deletion_ratio_abs = mean top-k drop / mean |score change| of a random deletion, defined
whatever the sign; deletion_rank_ratio compares the mean rank lost (rank - 1) the same way. Written to
bench/results/explain-<dataset>[-<model>]-<YYYYMMDD>.json (no model suffix for BERT4Rec, the headline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"

import numpy as np
import torch

from recsys_core.data.resolve import resolve_dataset
from recsys_core.evaluation.metrics import evaluate
from recsys_core.insight import explain
from recsys_core.models.base import load_model
from recsys_core.recommend.topk import recommend
from recsys_core.training.experiment import config_fields, make_split, parse_overrides, run_experiment


def get_model(args: argparse.Namespace, ds) -> tuple[object, dict]:
    """A loaded model (`--model-dir`) or one trained now; with what we know about its quality."""
    if args.model_dir:
        model = load_model(args.model_dir)
        test = evaluate(model, make_split(ds).test, ks=(10,))  # the same leave-one-out split as a training run
        config = json.loads((Path(args.model_dir) / "config.json").read_text()).get("config", {})
        return model, {"source": args.model_dir, "config": config, "test_ndcg@10": round(test["ndcg@10"], 4),
                       "test_hr@10": round(test["hr@10"], 4)}
    overrides = parse_overrides(args.set)
    if "train.cpu_budget_s" in {name for name, _ in config_fields(args.model)}:
        overrides = {"train.cpu_budget_s": args.budget, **overrides}
    result = run_experiment(ds, args.model, overrides)
    if args.save_model:
        result.model.save(args.save_model)
    return result.model, {"source": "trained now", "overrides": overrides, "train_s": round(result.train_s, 1),
                          "test_ndcg@10": round(result.metrics["ndcg@10"], 4),
                          "test_hr@10": round(result.metrics["hr@10"], 4)}


def pick_users(ds, n: int, max_len: int, seed: int) -> np.ndarray:
    lengths = np.diff(ds.indptr)
    eligible = np.flatnonzero((lengths >= 1) & (lengths <= max_len))
    return np.sort(np.random.default_rng(seed).choice(eligible, min(n, len(eligible)), replace=False))


def measure(model, ds, users: np.ndarray, ks: tuple[int, ...], max_evals: int) -> dict:
    """Per user: top-10 latency, SHAP latency and evaluations, deletion drops and ranks for every k."""
    ex = explain.Explainer(model, ds, max_evals=max_evals, cache_size=1)
    rows = []
    for n, user in enumerate(users):
        history = ds.history(int(user))
        start = time.perf_counter()
        top = recommend(model, history, 10)
        topk_ms = (time.perf_counter() - start) * 1e3
        item = int(top["item"].iloc[0])
        start = time.perf_counter()
        expl = ex.explain_history(history, item)
        shap_s = time.perf_counter() - start
        row = {"user": int(user), "history": len(history), "item": item, "topk_ms": topk_ms, "shap_s": shap_s,
               "n_evals": expl.n_evals, "method": expl.method, "history_effect": expl.full_value - expl.base_value}
        for k in ks:
            check = ex.deletion_check(history, item, k=k, n_random=10, explanation=expl)
            row |= {f"top_drop@{k}": check.top_drop, f"random_drop@{k}": check.random_drop,
                    f"top_rank@{k}": check.top_rank, f"random_rank@{k}": check.random_rank,
                    f"random_abs@{k}": check.random_abs_change}
        rows.append(row)
        if (n + 1) % 20 == 0:
            print(f"  {n + 1}/{len(users)} users, median SHAP {np.median([r['shap_s'] for r in rows]):.2f} s",
                  file=sys.stderr, flush=True)
    return summarise(rows, ks)


def summarise(rows: list[dict], ks: tuple[int, ...]) -> dict:
    col = lambda name: np.array([r[name] for r in rows], dtype=float)
    out = {
        "shap_median_s": round(float(np.median(col("shap_s"))), 3),
        "shap_p90_s": round(float(np.percentile(col("shap_s"), 90)), 3),
        "topk_median_ms": round(float(np.median(col("topk_ms"))), 2),
        "topk_p90_ms": round(float(np.percentile(col("topk_ms"), 90)), 2),
        "n_evals_median": int(np.median(col("n_evals"))),
        "methods": {m: sum(r["method"] == m for r in rows) for m in ("exact", "permutation")},
        "history_len_median": float(np.median(col("history"))),
        # How much the history moves the explained score at all (full - empty history), and how personal
        # the top-1 is: a model that ignores histories leaves nothing for a deletion check to find.
        "mean_history_effect": round(float(col("history_effect").mean()), 5),
        "distinct_top1_items": len({r["item"] for r in rows}),
    }
    for i, k in enumerate(ks):
        top, rand, rand_abs = col(f"top_drop@{k}"), col(f"random_drop@{k}"), col(f"random_abs@{k}")
        top_rise, rand_rise = col(f"top_rank@{k}").mean() - 1, col(f"random_rank@{k}").mean() - 1
        suffix = "" if i == 0 else f"_k{k}"
        out |= {
            # None when random deletions do not lower the score on average: no ratio, but no contest either.
            f"deletion_ratio{suffix}": round(float(top.mean() / rand.mean()), 3) if rand.mean() > 0 else None,
            # Defined even when random deletions raise the score: the top-k drop against the typical size
            # of a random k-deletion's effect, whichever its sign (never above the plain ratio when both exist).
            f"deletion_ratio_abs{suffix}": round(float(top.mean() / rand_abs.mean()), 3) if rand_abs.mean() > 0 else None,
            f"deletion_rank_ratio{suffix}": round(float(top_rise / rand_rise), 2) if rand_rise > 0 else None,
            f"mean_top_drop{suffix}": round(float(top.mean()), 5),
            f"mean_random_drop{suffix}": round(float(rand.mean()), 5),
            f"users_top_beats_random{suffix}": round(float(np.mean(top > rand)), 3),
            f"mean_rank_after_top{suffix}": round(float(col(f"top_rank@{k}").mean()), 2),
            f"mean_rank_after_random{suffix}": round(float(col(f"random_rank@{k}").mean()), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="bert4rec", help="family to train (ignored with --model-dir)")
    parser.add_argument("--model-dir", default="", help="explain a saved model folder instead of training one")
    parser.add_argument("--budget", type=float, default=180.0, help="training time budget (s) for transformers")
    parser.add_argument("--set", action="append", default=[], help="hyperparameter override key=value")
    parser.add_argument("--save-model", default="", help="save the model trained here to this folder")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--max-history", type=int, default=200)
    parser.add_argument("--k", type=int, default=3, help="items deleted in the headline deletion check")
    parser.add_argument("--max-evals", type=int, default=explain.MAX_EVALS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = resolve_dataset(args.dataset, None)
    name = Path(args.dataset).name if Path(args.dataset).exists() else args.dataset
    model, model_info = get_model(args, ds)
    start = time.perf_counter()
    explain.warm_up()
    warm_s = time.perf_counter() - start
    users = pick_users(ds, args.users, args.max_history, args.seed)
    ks = tuple(dict.fromkeys([args.k, 5 if args.k != 5 else 3]))
    started = time.perf_counter()
    result = measure(model, ds, users, ks, args.max_evals)
    record = {
        "dataset": name, "model": model.family, **result, "k": args.k, "users": len(users),
        "max_history": args.max_history, "max_evals": args.max_evals, "max_exact": explain.MAX_EXACT,
        "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m_end": round(os.getloadavg()[0], 2), "warm_up_s": round(warm_s, 2),
        "wall_s": round(time.perf_counter() - started, 1), "model_info": model_info,
        "date": dt.date.today().isoformat(),
    }
    text = json.dumps(record, indent=2)
    print(text)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / \
        f"explain-{name}-{model.family}-{dt.date.today():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
