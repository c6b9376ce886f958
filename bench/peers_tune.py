"""A peer tuned as ours is: RecTools `SASRecModel` (or `BERT4RecModel`) through the tuner's Optuna set-up, on the
validation split only, within the same CPU-second budget; then its winner trained once per seed and tested.

    .venv/bin/python bench/peers_tune.py --dataset demo --model SASRecModel --budget-cpu-s 900 --seeds 0,1,2 \\
        --workspace /tmp/peers-tune-demo            # ~30 min on one core; the same command resumes the study

What is the same as `recsys_core.training.tune` (issue 23, "ours tuned vs theirs tuned"): TPE (seeded,
multivariate, 5 start-up trials) over the matching space (width, blocks, heads, dropout, history length, lr,
batch size; RecTools has no weight decay), the library's defaults enqueued as the first trial, a trial's CPU
cap a quarter of the budget (or what is left), no trial started once the budget is spent, the trial's value
its best validation NDCG@10 over every validation user (our evaluator, `peers.py --eval-server`), and the
winner's final runs at the trial cap. What differs: no pruner (the peer trains in its own venv and reports its
curve when it ends), so a weak peer trial runs to its patience or cap: fewer trials for the peer, each complete.
Trials run one at a time, niced, on one thread, as `peers.py` runs the peers. Rows as `bench/tune.py`'s
(variant "tuned"), so `bench/tune.py --peers-file` puts them in the same table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from peers import PEERS_PY, PEERS_VENV, check_export, export_split, load_split, run_peer

from recsys_core.training.tune import MIN_TRIAL_S

TRIAL_SHARE = 0.25  # as recsys_core.training.tune
SPACE = {  # RecTools' names; the same ranges as our SequentialConfig.search_space where a setting matches
    "n_factors": [32, 64, 128, 256], "n_blocks": (1, 3), "n_heads": [1, 2, 4], "dropout_rate": (0.0, 0.5),
    "session_max_len": [25, 50, 100, 200], "lr": (3e-4, 5e-3), "batch_size": [32, 64, 128],
}

# RecTools 0.19's own defaults of the searched settings (SASRecModel / BERT4RecModel signatures).
DEFAULTS = {m: {"n_factors": 256, "n_blocks": 2, "n_heads": 4, "dropout_rate": 0.2, "session_max_len": 100,
                "lr": 1e-3, "batch_size": 128} for m in ("SASRecModel", "BERT4RecModel")}


def suggest(trial: optuna.Trial) -> dict:
    p = {"n_factors": trial.suggest_categorical("n_factors", SPACE["n_factors"]),
         "n_blocks": trial.suggest_int("n_blocks", *SPACE["n_blocks"]),
         "n_heads": trial.suggest_categorical("n_heads", SPACE["n_heads"]),
         "dropout_rate": trial.suggest_float("dropout_rate", *SPACE["dropout_rate"]),
         "session_max_len": trial.suggest_categorical("session_max_len", SPACE["session_max_len"]),
         "lr": trial.suggest_float("lr", *SPACE["lr"], log=True),
         "batch_size": trial.suggest_categorical("batch_size", SPACE["batch_size"])}
    return p


def spent(study: optuna.Study) -> float:
    return float(sum(t.user_attrs.get("cpu_s", 0.0) for t in study.trials))


def search(args: argparse.Namespace, folder: Path, study: optuna.Study) -> None:
    """Trials until the budget is spent (each at most a quarter of it, or what is left)."""
    cap = args.budget_cpu_s * TRIAL_SHARE
    while spent(study) < args.budget_cpu_s:
        trial = study.ask()
        params = suggest(trial)
        if params["n_factors"] % params["n_heads"]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # not a model: costs nothing
            continue
        args.cpu_cap = min(cap, max(args.budget_cpu_s - spent(study), MIN_TRIAL_S))  # as our tuner's trials
        row = run_peer(args, "rectools", args.model, args.seed, folder, params, tag=f"-trial{trial.number}",
                       test=False)
        cpu = float(row.get("cpu_s_total") or args.cpu_cap)
        trial.set_user_attr("cpu_s", cpu)
        trial.set_user_attr("stopped", row.get("stopped") or row.get("error"))
        if "error" in row:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, row["best_valid_ndcg@10"])
        print(f"[peers-tune] trial {trial.number}: {row['best_valid_ndcg@10']:.4f} in {cpu:.0f} CPU s "
              f"({spent(study):.0f}/{args.budget_cpu_s:.0f}) {params}", file=sys.stderr, flush=True)


def final(args: argparse.Namespace, folder: Path, best: optuna.trial.FrozenTrial, seeds: list[int]) -> dict:
    args.cpu_cap = args.budget_cpu_s * TRIAL_SHARE
    runs = [run_peer(args, "rectools", args.model, s, folder, best.params, tag="-final") for s in seeds]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error")}

    def spread(key: str) -> dict:
        values = [float(r[key]) for r in ok]
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
                "seeds": [r["seed"] for r in ok], "values": [round(v, 4) for v in values]}

    return {"ndcg@10": spread("ndcg@10"), "hr@10": spread("hr@10"), "final_cpu_s": [r.get("cpu_s_total") for r in ok],
            "stop_reasons": [r.get("stopped") for r in ok]}


def tuned_cpu_s(search_cpu_s: float, final_cpu_s: list | None) -> float:
    """CPU seconds to the result, as bench/tune.py counts ours: the search plus one seed's final training."""
    return round(search_cpu_s + (float(np.mean(final_cpu_s)) if final_cpu_s else 0.0), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--model", default="SASRecModel", choices=("SASRecModel", "BERT4RecModel"))
    p.add_argument("--budget-cpu-s", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0, help="the search's seed (and its trials' training seed)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the winner's final runs")
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-valid-users", type=int, default=5000)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--workspace", required=True, help="the exported split, the trials' files and studies.db")
    p.add_argument("--subset-users", type=int, default=0, help="only the first N users (a smoke test)")
    p.add_argument("--out", help="JSON (default bench/results/peers-tune-<dataset>-<date>.json)")
    args = p.parse_args()
    if not PEERS_PY.exists():
        sys.exit(f"[peers-tune] {PEERS_VENV} is missing: run `.venv/bin/python bench/peers.py --setup` first")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    folder = Path(args.workspace)
    started, load_start = time.perf_counter(), os.getloadavg()
    ds, split = load_split(args.dataset, args.subset_users)
    export_split(split, folder, sorted({args.seed, *seeds}), args.max_valid_users, ds.name)
    check_export(split, folder)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{ds.name}:rectools:{args.model}", storage=f"sqlite:///{folder / 'studies.db'}",
        direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=5, multivariate=True))
    if not study.trials:
        study.enqueue_trial(DEFAULTS[args.model])  # the library's defaults first: they always compete
    search(args, folder, study)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        sys.exit(f"[peers-tune] no trial finished within the budget: see {folder} (trial logs above)")
    best = max(done, key=lambda t: t.value)
    row_final = final(args, folder, best, seeds)
    row = {"library": "rectools", "model": args.model, "variant": "tuned", **row_final,
           "search_cpu_s": round(spent(study), 1), "budget_cpu_s": args.budget_cpu_s,
           "cpu_s": tuned_cpu_s(spent(study), row_final.get("final_cpu_s")),
           "trial_cpu_s": args.budget_cpu_s * TRIAL_SHARE, "trials": len(study.trials),
           "best_valid_ndcg@10": round(best.value, 4), "best_params": best.params,
           "winner_is_the_defaults": best.params == DEFAULTS[args.model],
           "device": args.device}
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value and round(t.value, 5),
               "cpu_s": t.user_attrs.get("cpu_s"), "stopped": t.user_attrs.get("stopped"), "params": t.params}
              for t in study.trials]
    report = {"benchmark": "peers-tune", "dataset": ds.name, "split": split.kind, "date": f"{dt.date.today()}",
              "rows": [row], "trials": trials, "threads": 1, "cpus": os.cpu_count(),
              "wall_s": round(time.perf_counter() - started, 1), "load_avg_start": [round(x, 2) for x in load_start],
              "load_avg_end": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv)}
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"peers-tune-{ds.name}-{dt.date.today():%Y%m%d}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
