"""Validation's share of training, and whether the planned (cheaper) validation picks models as well.

    .venv/bin/python bench/validation.py --dataset demo --seeds 0,1,2

Trains BERT4Rec and SASRec+ with the CPU demo profile (early stopping after 5 validations without gain,
at most 2,700 steps, 240 CPU s) twice per seed: `valid_share=0` (every validation user at every
validation, the behaviour before the plan) and the default `valid_share=0.08`, in the same process one
after the other. Records test NDCG@10/HR@10 (full ranking), CPU seconds of training and of validation
(the loop's own per-epoch record), the plan, the best epoch and why it stopped; medians and the seeds'
spread per setting. JSON to bench/results/validation-<dataset>-<date>.json; runs already in today's file
are kept, so `--shares 0.05` adds a setting next to the earlier ones; `--label` names runs of changed code
(their own rows and summary groups, beside the earlier ones).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROFILE = {"patience": 5, "max_steps": 2700, "cpu_budget_s": 240}


def one_run(ds, split, family: str, share: float, seed: int, label: str) -> dict:
    from recsys_core.training.experiment import run_experiment

    load = os.getloadavg()
    result = run_experiment(ds, family, {**DEMO_PROFILE, "valid_share": share, "seed": seed}, split=split)
    history, report = result.model.training_history(), result.model.fit_report()
    validation = sum(h.get("validation_cpu_seconds", 0.0) for h in history)
    training = history[-1]["cpu_seconds"]
    return {"model": family, "valid_share": share, "seed": seed, "label": label, "git": _git(),
            "load_avg_start": [round(x, 2) for x in load], "ndcg@10": round(result.metrics["ndcg@10"], 4),
            "hr@10": round(result.metrics["hr@10"], 4), "train_cpu_s": round(training, 1),
            "validation_cpu_s": round(validation, 2), "measured_share": round(validation / training, 3),
            "plan": report["validation"], "validations": sum("metrics" in h for h in history),
            "best_epoch": report["best_epoch"], "epochs": len(history), "stopped": report["stopped"]}


def _git() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True)
    return run.stdout.strip()


def summary(rows: list[dict]) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in rows]
        return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}

    return {"runs": len(rows), **{k: spread(k) for k in ("ndcg@10", "hr@10", "train_cpu_s", "measured_share")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--models", default="bert4rec,sasrec")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shares", default="0,0.08")
    p.add_argument("--label", default="")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.training.experiment import make_split

    torch.set_num_threads(args.threads)
    ds = resolve_dataset(args.dataset, None)
    split = make_split(ds)
    out = ROOT / "bench" / "results" / f"validation-{ds.name}-{dt.date.today():%Y%m%d}.json"
    # Runs already in today's file are kept (another share can be added later, compared with the same seeds).
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    have = {(r["model"], r["valid_share"], r["seed"], r.get("label", "")) for r in rows}
    loads, started = [os.getloadavg()], time.perf_counter()
    for family in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for share in (float(s) for s in args.shares.split(",")):
                if (family, share, seed, args.label) in have:
                    continue
                rows.append(one_run(ds, split, family, share, seed, args.label))
                loads.append(os.getloadavg())
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    def key(r: dict) -> tuple:
        return r["model"], r["valid_share"], r.get("label", "")

    groups = {f"{f}/valid_share={s}" + (f"/{lab}" if lab else ""): summary([r for r in rows if key(r) == (f, s, lab)])
              for f, s, lab in dict.fromkeys(key(r) for r in rows)}  # only groups that ran
    report = {"benchmark": "validation", "dataset": ds.name, "valid_users": len(split.valid), "profile": DEMO_PROFILE,
              "threads": args.threads, "device": "cpu", "date": dt.date.today().isoformat(), "summary": groups,
              "runs": rows, "wall_s": round(time.perf_counter() - started, 1),
              "load_avg": [[round(x, 2) for x in la] for la in loads], "cpus": os.cpu_count()}
    text = json.dumps(report, indent=2)
    print(text)
    out.write_text(text + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
