"""Training tricks the peers use, swept on the validation split only (never the test split).

    .venv/bin/python bench/sweep.py --dataset demo --seeds 0,1 --jobs 2
    .venv/bin/python bench/sweep.py --dataset ../shared/data/ml-100k --seeds 0,1 --jobs 2
    .venv/bin/python bench/sweep.py --table bench/results/sweep-demo-20261202.json
    .venv/bin/python bench/sweep.py --dataset demo --models sasrec --variants '[{"hidden": 128}]' --out F.json

Each variant changes one setting of our model's defaults and trains with the CPU demo profile (early
stopping after 5 validations without gain, at most 2,700 steps, 240 CPU s), validating every user
(`valid_share=0`, so variants are compared on the same users). The score is the best validation
NDCG@10 the loop kept; the model is never scored on the test split here. Each run is a child process on
one torch thread, `--jobs` at a time. Rows: variant, seeds' mean/min/max, its difference from the
baseline of the same seeds, CPU seconds. JSON to bench/results/sweep-<dataset>-<date>.json.

Variants (from RecBole, RecTools and the BERT4Rec/gSASRec papers):
  mask_token_share=0.8   BERT's 80/10/10: a masked target shows [MASK], a random item or itself
  mask_last_prob=0.5     more sequences also mask their last item (RecBole masks only the last in half)
  adam_beta2=0.98        Adam betas (0.9, 0.98) as in BERT4Rec's code
  loss=gbce              gBCE over 1,024 uniform negatives (gSASRec; our default here is the full softmax)
  mask_prob=0.2 / 0.6    BERT4Rec's Cloze rate (ours 0.4)
  max_len=50 / 200       history length read (ours 100 when first swept; 50 since)
  and the single winners together (one combination per model)

`--inner` shifts the split one item back, for what the validation curve cannot judge (refit=true trains on the
validation items): each user's last training item becomes the validation, and the final model is scored on the
validation items, as a test would be. The test split is never read.

Runs already in today's results file for the dataset are kept and not trained again, so adding a
variant or a seed trains only what is new.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROFILE = {"patience": 5, "max_steps": 2700, "cpu_budget_s": 240, "valid_share": 0.0}
VARIANTS = {
    "bert4rec": [{}, {"mask_token_share": 0.8}, {"mask_last_prob": 0.5}, {"adam_beta2": 0.98}, {"loss": "gbce"},
                 {"mask_prob": 0.2}, {"mask_prob": 0.6}, {"max_len": 50}, {"max_len": 200},
                 {"mask_token_share": 0.8, "mask_last_prob": 0.5, "adam_beta2": 0.98}],  # the single winners together
    "sasrec": [{}, {"adam_beta2": 0.98}, {"loss": "gbce"}, {"max_len": 50}, {"max_len": 200},
               {"adam_beta2": 0.98, "max_len": 200}],
}


def name(variant: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "baseline"


def shifted_split(split):
    """The split one item back: each evaluated user's last training item (where there are two) is the validation,
    and the validation items are the test. Nothing of the real test split is in it."""
    import numpy as np

    from recsys_core.data.splits import EvalSet, Split

    users = np.asarray([u for u in split.valid.users if len(split.train[u]) >= 2], dtype=np.int32)
    train = list(split.train)
    for u in users:
        train[u] = split.train[u][:-1]
    valid = EvalSet(users, [train[u] for u in users], [split.train[u][-1:] for u in users])
    return Split(split.kind, train, valid, split.valid, split.n_items, split.holdout)


def worker(args: argparse.Namespace) -> dict:
    """One training in this (child) process: best validation NDCG@10 (with --inner: the final model's NDCG@10 on
    the validation items), CPU seconds; no test scoring."""
    import torch

    torch.set_num_threads(1)
    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.evaluation.metrics import evaluate
    from recsys_core.training.experiment import make_model, make_split

    ds = resolve_dataset(args.dataset, None)
    split = make_split(ds)
    split = shifted_split(split) if args.inner else split
    variant = json.loads(args.variant)
    started = time.process_time()
    settings = {**DEMO_PROFILE, **json.loads(args.profile), **variant, "seed": args.seed}
    model = make_model(args.model, settings).fit(ds, split=split)
    report = model.fit_report()
    # members > 1: the ensemble's own validation (its members validated one by one while training)
    best = report["members"]["valid"]["ndcg@10"] if "members" in report else report["best_metric"]
    score = evaluate(model, split.test, ks=(10,))["ndcg@10"] if args.inner else best
    return {"model": args.model, "variant": name(variant), "seed": args.seed, "refit": report.get("refit"),
            "best_valid_ndcg@10": round(score, 5), "best_epoch": report["best_epoch"],
            "stopped": report["stopped"], "steps": report["steps"], "cpu_s": round(time.process_time() - started, 1),
            "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child(args: argparse.Namespace, model: str, variant: dict, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--dataset", args.dataset, "--model", model,
           "--variant", json.dumps(variant), "--seed", str(seed), "--profile", args.profile] + ["--inner"] * args.inner
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"model": model, "variant": name(variant), "seed": seed, "error": proc.stderr[-2000:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _std(values: list[float]) -> float | None:
    """Sample standard deviation over the seeds (None for one seed)."""
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def summarise(runs: list[dict]) -> list[dict]:
    ok = [r for r in runs if "error" not in r]
    base = {(r["model"], r["seed"]): r["best_valid_ndcg@10"] for r in ok if r["variant"] == "baseline"}
    rows = []
    for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in ok):
        mine = [r for r in ok if r["model"] == model and r["variant"] == variant]
        values = [r["best_valid_ndcg@10"] for r in mine]
        deltas = [r["best_valid_ndcg@10"] - base[(model, r["seed"])] for r in mine if (model, r["seed"]) in base]
        rows.append({"model": model, "variant": variant, "seeds": [r["seed"] for r in mine],
                     "valid_ndcg@10": {"mean": round(statistics.mean(values), 4), "std": _std(values),
                                       "min": min(values), "max": max(values)},
                     "delta_vs_baseline": {"mean": round(statistics.mean(deltas), 4), "std": _std(deltas),
                                           "min": round(min(deltas), 4),
                                           "max": round(max(deltas), 4)} if deltas else None,
                     "cpu_s_median": statistics.median(r["cpu_s"] for r in mine)})
    return rows


def table(report: dict) -> str:
    lines = [f"{report['dataset']} (validation NDCG@10, seeds {report['seeds']})", "",
             "| model | variant | valid NDCG@10 mean ± std (min-max) | vs baseline, same seeds: mean (min..max) | CPU s |",
             "|---|---|---|---|---|"]
    for r in report["summary"]:
        v, d = r["valid_ndcg@10"], r["delta_vs_baseline"]
        delta = f"{d['mean']:+.4f} ({d['min']:+.4f}..{d['max']:+.4f})" if d else ""
        std = f" ± {v['std']:.4f}" if v.get("std") is not None else ""
        lines.append(f"| {r['model']} | {r['variant']} | {v['mean']:.4f}{std} ({v['min']:.4f}-{v['max']:.4f}) | {delta} "
                     f"| {r['cpu_s_median']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--models", default="bert4rec,sasrec")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--variants", help='JSON list of variants to run instead of the built-in ones, e.g. '
                                      '\'[{"hidden": 128}, {"hidden": 256, "dropout": 0.2}]\' (the baseline always runs)')
    p.add_argument("--profile", default="{}", help="JSON settings over the demo profile for every run "
                                                   "(e.g. a larger cpu_budget_s for wider models)")
    p.add_argument("--inner", action="store_true", help="shift the split one item back and score the final model on "
                                                        "the validation items (for refit=true)")
    p.add_argument("--out", help="results JSON (default bench/results/sweep-<dataset>-<date>.json)")
    p.add_argument("--table", help="print the Markdown table of a results JSON and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.dataset != "demo" and not Path(args.dataset).exists():
        print(f"[sweep] dataset {args.dataset!r} not found: skipped", file=sys.stderr)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = Path(args.dataset).name if args.dataset != "demo" else "demo"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"sweep-{dataset}-{dt.date.today():%Y%m%d}.json"
    variants = {m: [{}] + json.loads(args.variants) for m in VARIANTS} if args.variants else VARIANTS
    # Runs already in today's file for this dataset are kept, not trained again (a sweep can grow).
    done = json.loads(out.read_text())["runs"] if out.is_file() else []
    have = {(r["model"], r["variant"], r["seed"]) for r in done if "error" not in r}
    # Seed by seed, every model and variant of a seed before the next seed: a sweep cut short still holds
    # complete same-seed comparisons, and the file is rewritten after every run so nothing finished is lost.
    todo = [(m, v, s) for s in seeds for m in args.models.split(",") for v in variants[m]
            if (m, name(v), s) not in have]
    started, load_start = time.perf_counter(), os.getloadavg()
    runs = [r for r in done if "error" not in r]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # threads only wait on child processes
        for row in pool.map(lambda job: child(args, *job), todo):
            runs.append(row)
            report = {"benchmark": "sweep", "dataset": dataset, "split": "leave_one_out; scored on validation only" + (
                          ", shifted one item back (--inner): the final model scored on the validation items"
                          if args.inner else ""),
                      "profile": {**DEMO_PROFILE, **json.loads(args.profile)}, "threads_per_run": 1, "jobs": args.jobs,
                      "seeds": seeds, "date": dt.date.today().isoformat(), "summary": summarise(runs), "runs": runs,
                      "wall_s": round(time.perf_counter() - started, 1),
                      "load_avg_start": [round(x, 2) for x in load_start],
                      "load_avg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
            out.write_text(json.dumps(report, indent=2) + "\n")
    if not todo:
        print(f"[sweep] every run is already in {out}", file=sys.stderr)
        return
    print(table(report))
    print(f"[sweep] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
