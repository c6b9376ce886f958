"""Ours with defaults against ours tuned within a CPU budget (recsys_core.training.tune), next to the peers.

    .venv/bin/python bench/tune.py --dataset demo --models sasrec,bert4rec --budget-cpu-s 900 --seeds 0,1,2 \\
        --peers-file bench/results/peers-demo-movietweetings-20261202.json
    .venv/bin/python bench/tune.py --dataset demo --models ease --budget-cpu-s 10 --max-trials 2 --seeds 0 \\
        --out /tmp/tune-smoke.json                                     # a smoke test: seconds
    .venv/bin/python bench/tune.py --table bench/results/tune-demo-movietweetings-20261206.json
    .venv/bin/python bench/tune.py --dataset demo --rows-from FILE.json --peers-file PEERS.json \
        --peers-file bench/results/peers-tune-demo-movietweetings-20261206.json   # the table again, more peers

Per model: `default` trains the family's defaults under the CPU demo profile (the Train page's, `--profile`) once
per seed; `tuned` runs the tuner for `--budget-cpu-s` CPU seconds on the validation split only (the study is
kept in `--workspace`, so the same command resumes it instead of starting over), then trains the winner once
per seed and tests it. Both score the same leave-one-out test users with the same evaluator. Rows, as
bench/results/peers-*.json extended: {library, model, variant: default|tuned, ndcg@10 {mean, std, seeds, values},
hr@10 {...}, cpu_s (CPU seconds to the result: per seed for default; the search plus one seed's final training
for tuned), budget_cpu_s, stop reasons}; `--peers-file` adds the rows of a peers-*.json (RecTools, RecBole) as
they were measured (a peers-tune-*.json from bench/peers_tune.py adds a tuned peer), and the summary gives our best
over the best peer at its defaults and over the best tuned peer. Everything here runs in this process on
`RECSYS_TRAINING_THREADS` threads (default 1), so a CPU second is the same work at any load; the load average
before and after is recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.data.resolve import resolve_dataset
from recsys_core.models.profiles import profile_for
from recsys_core.threads import training_threads, use_threads
from recsys_core.training.experiment import make_split, run_experiment
from recsys_core.training.tune import studies_path, tune
from recsys_core.workspace.registry import Workspace

METRICS = ("ndcg@10", "hr@10")


def spread(values: list[float], seeds: list[int]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "seeds": seeds,
            "values": [round(float(v), 4) for v in values]}


def default_row(ds, split, model: str, profile: str, seeds: list[int]) -> dict:
    """The family's defaults under the profile, once per seed."""
    base = profile_for(name=profile).overrides(model) if profile != "none" else {}
    runs = [run_experiment(ds, model, {**base, "train.seed": seed} if "train.seed" in _names(model) else base,
                           split=split) for seed in seeds]
    return {"library": "recsys_core", "model": model, "variant": "default", "profile": profile,
            **{m: spread([r.metrics[m] for r in runs], seeds) for m in METRICS},
            "cpu_s": round(float(np.mean([r.cpu_s for r in runs])), 1),
            "budget_cpu_s": base.get("train.cpu_budget_s") or base.get("cpu_budget_s"),
            "stop_reasons": [r.extra.get("stop_reason", "one pass") for r in runs]}


def _names(model: str) -> set[str]:
    from recsys_core.training.experiment import config_fields

    return {name for name, _ in config_fields(model)}


def tuned_row(ds, split, model: str, args: argparse.Namespace, ws: Workspace, seeds: list[int]) -> dict:
    result = tune(ds, model, budget_cpu_s=args.budget_cpu_s, storage=studies_path(ws.root), dataset_name=ds.name,
                  split=split, trial_cpu_s=args.trial_cpu_s, max_trials=args.max_trials, seed=args.seed,
                  final_seeds=tuple(seeds))
    final = result.final
    per_seed = final.get("cpu_s", 0.0) / max(len(final.get("ndcg@10", {}).get("seeds", [])), 1)
    return {"library": "recsys_core", "model": model, "variant": "tuned",
            **{m: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in final[m].items()} for m in METRICS},
            "cpu_s": round(result.spent_cpu_s + per_seed, 1), "search_cpu_s": result.spent_cpu_s,
            "budget_cpu_s": args.budget_cpu_s, "trial_cpu_s": result.trial_cpu_s,
            "stop_reasons": final.get("stop_reasons"), "study": result.study, "trials": len(result.trials),
            "best_valid_ndcg@10": round(result.best["value"], 4), "best_params": result.best["params"],
            "winner_under_trained": result.best.get("under_trained"), "importances": result.importances}


def peer_rows(path: str) -> tuple[list[dict], dict]:
    """The peers' rows of a peers-*.json as they were measured (variant default), or of a peers-tune-*.json
    (bench/peers_tune.py: variant tuned, already in this file's row format), and where they came from."""
    report = json.loads(Path(path).read_text())
    if report.get("benchmark") == "peers-tune":
        rows = [{**r, "from": path} for r in report["rows"] if "error" not in r]
        return rows, {"file": path, "date": report.get("date"), "protocol": "bench/peers_tune.py"}
    rows = []
    for r in report["results"]:
        if r["library"] == "recsys_core":
            continue
        cpu = [run.get("cpu_s_total") for run in r.get("runs", []) if run.get("cpu_s_total") is not None]
        rows.append({"library": r["library"], "model": r["model"], "variant": "default",
                     **{m: r[m] for m in METRICS}, "cpu_s": round(float(np.mean(cpu)), 1) if cpu else None,
                     "budget_cpu_s": None, "file_cpu_cap_s": report.get("cpu_cap_s"),  # slow peers reran longer
                     "stop_reasons": [run.get("stopped") for run in r.get("runs", [])], "from": path})
    return rows, {"file": path, "date": report.get("date"), "protocol": report.get("protocol")}


def summary(rows: list[dict]) -> dict:
    """Our best row over the best peer at its defaults (converged), and over the best tuned peer when there is one."""
    ours = [r for r in rows if r["library"] == "recsys_core"]
    out = {}
    for variant, key in (("default", ""), ("tuned", "_tuned")):
        peers = [r for r in rows if r["library"] != "recsys_core" and r.get("variant", "default") == variant]
        if not ours or not peers:
            continue
        best, peer = max(ours, key=lambda r: r["ndcg@10"]["mean"]), max(peers, key=lambda r: r["ndcg@10"]["mean"])
        out |= {"ours_best": f"{best['model']} {best['variant']}", f"peer_best{key}": f"{peer['library']} {peer['model']}",
                f"ratio_ndcg@10{key}": round(best["ndcg@10"]["mean"] / peer["ndcg@10"]["mean"], 3),
                f"beyond_spread{key}": best["ndcg@10"]["mean"] - best["ndcg@10"]["std"]
                > peer["ndcg@10"]["mean"] + peer["ndcg@10"]["std"]}
    return out


def _spread(m: dict) -> str:
    """mean ± std; a single seed (std None in peers-*.json) shows its mean alone."""
    return f"{m['mean']:.4f}" + (f" ± {m['std']:.4f}" if m.get("std") is not None else " (1 seed)")


def table(report: dict) -> str:
    lines = ["| library | model | variant | NDCG@10 | HR@10 | CPU s | budget CPU s | stop |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        n, h = r["ndcg@10"], r["hr@10"]
        stops = ", ".join(sorted({str(s) for s in r.get("stop_reasons") or []}))
        lines.append(f"| {r['library']} | {r['model']} | {r['variant']} | {_spread(n)} | {_spread(h)} | {r.get('cpu_s')} | "
                     f"{r.get('budget_cpu_s')} | {stops} |")
    s = report.get("summary") or {}
    for key, words in (("", "best peer"), ("_tuned", "best tuned peer")):
        if f"ratio_ndcg@10{key}" in s:
            lines.append(f"\nours best ({s['ours_best']}) / {words} ({s[f'peer_best{key}']}): {s[f'ratio_ndcg@10{key}']}x "
                         f"(beyond the seeds' spread: {s[f'beyond_spread{key}']})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--models", default="sasrec,bert4rec")
    p.add_argument("--variants", default="default,tuned", help="default, tuned or both")
    p.add_argument("--budget-cpu-s", type=float, default=900.0, help="the search's CPU seconds per model")
    p.add_argument("--trial-cpu-s", type=float, default=None, help="one trial's CPU cap (default: a quarter)")
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="the search's seed")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the default runs and of the winner's final runs")
    p.add_argument("--profile", default="demo", help="the default variant's profile (demo, full, none)")
    p.add_argument("--workspace", help="where the studies are kept (default: a folder under the temp dir)")
    p.add_argument("--peers-file", action="append", default=[],
                   help="a bench/results/peers-*.json or peers-tune-*.json whose peer rows join the table (repeatable)")
    p.add_argument("--rows-from", help="a tune-*.json whose rows are reused instead of training again (with "
                                       "--peers-file: the table redone with more peers)")
    p.add_argument("--out", help="results JSON (default bench/results/tune-<dataset>-<date>.json)")
    p.add_argument("--table", help="print the Markdown table of a results JSON and exit")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    use_threads(training_threads())
    ws = Workspace(args.workspace or Path(tempfile.gettempdir()) / "recsys-bench-tune")
    ds = resolve_dataset(args.dataset, ws)
    split = make_split(ds)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    load_start, started = os.getloadavg(), time.perf_counter()
    reused = json.loads(Path(args.rows_from).read_text()) if args.rows_from else None
    rows = [r for r in reused["rows"] if r["library"] == "recsys_core"] if reused else []
    for model in [] if reused else [m.strip() for m in args.models.split(",") if m.strip()]:
        if "default" in args.variants:
            rows.append(default_row(ds, split, model, args.profile, seeds))
            print(json.dumps(rows[-1]), file=sys.stderr)
        if "tuned" in args.variants:
            rows.append(tuned_row(ds, split, model, args, ws, seeds))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "importances"}), file=sys.stderr)
    peers_from = []
    for path in args.peers_file:
        more, source = peer_rows(path)
        rows, peers_from = rows + more, peers_from + [source]
    report = {"benchmark": "tune", "dataset": ds.name, "split": split.kind, "holdout": split.holdout,
              "test_users": len(split.test), "date": f"{dt.date.today():%Y-%m-%d}", "rows": rows,
              "summary": summary(rows), "peers_from": peers_from, "threads": training_threads(),
              "wall_s": round(time.perf_counter() - started, 1), "cpus": os.cpu_count(),
              "load_avg_start": [round(x, 2) for x in load_start],
              "load_avg_end": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv),
              **({"rows_from": {"file": args.rows_from, "command": reused.get("command"), "wall_s": reused.get("wall_s"),
                                "load_avg_start": reused.get("load_avg_start"),
                                "load_avg_end": reused.get("load_avg_end")}} if reused else {})}
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"tune-{ds.name}-{dt.date.today():%Y%m%d}.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
