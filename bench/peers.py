"""Quality against peer libraries (RecTools, RecBole) on exactly our leave-one-out split, one evaluator.

    .venv/bin/python bench/peers.py --setup                       # once: ~/.cache/recsys-explorer/peers-venv (see README)
    .venv/bin/python bench/peers.py --dataset ../shared/data/ml-100k --seeds 0 --cpu-cap 900

This process (main venv) builds the split with `leave_one_out`, writes it as NPY/JSON to a temp folder,
and runs every training in a subprocess of its own, niced, on one torch thread, under a CPU-second cap:
our models through `run_experiment` in the main venv, the peers through `bench/peers_worker.py` in
its own venv, ~/.cache/recsys-explorer/peers-venv or $RECSYS_PEERS_VENV (RecTools pins numpy < 2, so the peers cannot share our venv). Peers early-stop on
our NDCG@10 over the same validation users our models validate on, and write full-catalogue test
scores as NPY; this process ranks them with `rank_metrics` (full ranking, history excluded, pessimistic
ties), the same code that scores our models. No pickle crosses the boundary.

`our_cpu_s_to_match` is read from our model's validation curve: the CPU seconds (validation included)
after which our validation NDCG@10 first reaches the peer's best validation NDCG@10, on the same
validation users. Our loop logs validation, not test, per epoch, so this compares like with like.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peers_worker import read_split

# Outside the checkout: a venv of third-party code inside the tree would be read by every repo-wide check.
PEERS_VENV = Path(os.environ.get("RECSYS_PEERS_VENV") or Path.home() / ".cache" / "recsys-explorer" / "peers-venv")
PEERS_PY = PEERS_VENV / "bin" / "python"
OURS = {"sasrec": "sasrec", "bert4rec": "bert4rec", "blend": "blend"}  # benchmark name -> our family
PEERS = [("rectools", "SASRecModel"), ("rectools", "BERT4RecModel"), ("recbole", "SASRec"), ("recbole", "BERT4Rec")]
# The peer each of our models is matched against (same architecture family).
MATCH = {"SASRecModel": "sasrec", "SASRec": "sasrec", "BERT4RecModel": "bert4rec", "BERT4Rec": "bert4rec"}
METRICS = ("ndcg@10", "hr@10")
REUSE_ONLY = False  # --reuse-only: report the runs already in --split-dir, train nothing


# ---- the split, exported ---------------------------------------------------------------------------


def export_split(split, folder: Path, seeds: list[int], max_valid_users: int, name: str) -> None:
    """Write `split` (leave-one-out) as NPY + JSON: train sequences as flat items + indptr, one validation
    and one test target per evaluated user, and per seed the validation rows our loop validates on."""
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(s) for s in split.train), dtype=np.int64, count=len(split.train))
    flat = np.concatenate([np.asarray(s, np.int64) for s in split.train]) if len(split.train) else np.zeros(0, np.int64)
    np.save(folder / "train_items.npy", flat)
    np.save(folder / "train_indptr.npy", np.concatenate([[0], np.cumsum(lengths)]))
    np.save(folder / "eval_users.npy", np.asarray(split.test.users, np.int64))
    np.save(folder / "valid_targets.npy", np.array([t[0] for t in split.valid.targets], np.int64))
    np.save(folder / "test_targets.npy", np.array([t[0] for t in split.test.targets], np.int64))
    for seed in seeds:
        np.save(folder / f"valid_rows_seed{seed}.npy", valid_rows(len(split.valid), max_valid_users, seed))
    meta = {"dataset": name, "n_users": len(split.train), "n_items": int(split.n_items), "kind": split.kind,
            "holdout": split.holdout, "max_valid_users": max_valid_users}
    (folder / "meta.json").write_text(json.dumps(meta))


def valid_rows(n_valid: int, cap: int, seed: int) -> np.ndarray:
    """The validation users our sequential models draw with `valid_share=0` (`sample_users`): all of them,
    or a seeded sample of `cap`. Recomputed here so the peers' venv needs none of our code."""
    if cap and n_valid > cap:
        return np.sort(np.random.default_rng(seed).choice(n_valid, cap, replace=False)).astype(np.int64)
    return np.arange(n_valid, dtype=np.int64)


def check_export(split, folder: Path) -> int:
    """Read the export back and compare it with `split` user by user; returns the users checked."""
    data = read_split(folder)
    if not np.array_equal(data["eval_users"], split.test.users) or not np.array_equal(split.valid.users,
                                                                                        split.test.users):
        raise AssertionError("evaluated users differ from leave_one_out")
    for u, seq in enumerate(split.train):
        if not np.array_equal(data["train"][u], seq):
            raise AssertionError(f"train sequence of user {u} differs")
    for i in range(len(split.test)):
        checks = ((data["valid_histories"][i], split.valid.histories[i]), (data["test_histories"][i], split.test.histories[i]),
                  (data["valid_targets"][i:i + 1], split.valid.targets[i]), (data["test_targets"][i:i + 1], split.test.targets[i]))
        if not all(np.array_equal(a, b) for a, b in checks):
            raise AssertionError(f"history or target of evaluated user {split.test.users[i]} differs")
    return len(split.test)


# ---- running one training ------------------------------------------------------------------------------


def _nice_env(device: str = "cpu") -> dict:
    hide = {} if device != "cpu" else {"CUDA_VISIBLE_DEVICES": ""}  # --device cuda/auto: the peers may use the GPU
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **hide}


def _timed(fn, args: argparse.Namespace, lib_model: tuple[str, str], seed: int, folder: Path,
           loads: list) -> dict:
    """Run one training; note the load average when it ends (timings under load are indicative only)."""
    row = fn(args, *lib_model, seed, folder) if fn is run_peer else fn(args, lib_model[1], seed, folder)
    loads.append(os.getloadavg())
    row.setdefault("load_avg_end", None)  # runs reused from a kept --split-dir carry their own
    return row


def ours_variant(entry: str) -> tuple[str, dict]:
    """`--ours` entry -> (our family, extra settings): "bert4rec" or "bert4rec@max_len=50;mask_token_share=0.8"
    (a variant, to confirm a validation sweep's winner on the test split next to the default)."""
    model, _, rest = entry.partition("@")
    extra = {}
    for pair in filter(None, rest.split(";")):
        key, _, value = pair.partition("=")
        try:
            extra[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            extra[key.strip()] = value.strip()
    return OURS[model], extra


def run_ours(args: argparse.Namespace, model: str, seed: int, folder: Path) -> dict:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    out = folder / f"ours-{safe}-{seed}.json"
    cmd = ["nice", "-n", "19", sys.executable, __file__, "--worker-ours", "--dataset", args.dataset, "--model", model,
           "--seed", str(seed), "--cpu-cap", str(args.cpu_cap), "--split-dir", str(folder), "--out", str(out),
           "--ours-overrides", args.ours_overrides]
    if args.subset_users:
        cmd += ["--subset-users", str(args.subset_users)]
    return _run(cmd, out, "recsys_core", model, seed)  # ours: CPU, as the app's demo profile trains


def run_peer(args: argparse.Namespace, library: str, model: str, seed: int, folder: Path, params: dict | None = None,
             tag: str = "", test: bool = True) -> dict:
    """One peer training (its defaults, or `params` over them: a tuner's trial, whose files carry `tag`, and
    which with `test=False` never scores the test users)."""
    out = folder / f"{library}-{model}-{seed}{tag}.json"
    cmd = ["nice", "-n", "19", str(PEERS_PY), str(ROOT / "bench" / "peers_worker.py"), "--library", library,
           "--model", model, "--seed", str(seed), "--cpu-cap", str(args.cpu_cap), "--patience", str(args.patience),
           "--split-dir", str(folder), "--out", str(out), "--device", args.device, "--params", json.dumps(params or {}),
           f"--tag={tag}"] + ([] if test else ["--valid-only"])
    row = _run(cmd, out, library, model, seed, args.device)
    if "error" in row or not test:
        return row
    data = read_split(folder)
    scores = np.load(row["scores_file"])
    row.update(score_test(scores, data))
    print(f"[peers] {library} {model} seed {seed}: test ndcg@10={row['ndcg@10']:.4f}", file=sys.stderr, flush=True)
    return row


def _run(cmd: list[str], out: Path, library: str, model: str, seed: int, device: str = "cpu") -> dict:
    if not out.is_file() and REUSE_ONLY:
        return {"library": library, "model": model, "seed": seed, "error": "no finished run in --split-dir (--reuse-only)"}
    if not out.is_file():  # a kept --split-dir resumes: finished runs are not trained again
        print(f"[peers] {library} {model} seed {seed} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, check=False, stdout=sys.stderr, env=_nice_env(device))
        if proc.returncode != 0 or not out.is_file():
            return {"library": library, "model": model, "seed": seed, "error": f"worker exited with {proc.returncode}"}
        row = json.loads(out.read_text())
        row["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]  # kept with the run, so a resume keeps it
        out.write_text(json.dumps(row))
    row = json.loads(out.read_text())
    print(f"[peers] {library} {model} seed {seed}: trained, best epoch {row.get('best_epoch')}", file=sys.stderr,
          flush=True)
    return row


def score_test(scores: np.ndarray, data: dict) -> dict:
    """Our evaluator on a peer's full-catalogue test scores: history excluded, pessimistic ties."""
    import torch

    from recsys_core.evaluation.metrics import rank_metrics

    targets = [data["test_targets"][i:i + 1] for i in range(len(data["test_targets"]))]
    per_user = rank_metrics(torch.from_numpy(scores), targets, exclude=data["test_histories"], ks=(10,))
    return {k: float(per_user[k].mean()) for k in METRICS} | {"users": len(targets)}


def worker_ours(args: argparse.Namespace) -> dict:
    """Train one of our models on the exported split (rebuilt and checked against it) and report as the peers do."""
    import torch

    torch.set_num_threads(1)
    from recsys_core.progress import Progress
    from recsys_core.training.experiment import run_experiment

    ds, split = load_split(args.dataset, args.subset_users)
    check_export(split, Path(args.split_dir))
    # valid_share=0: validate on every exported validation user, as the peers do (our default plan would
    # validate fewer users on a large set; this costs our models CPU, it never saves them any).
    family, extra = ours_variant(args.model)
    overrides = {"seed": args.seed, "cpu_budget_s": args.cpu_cap, "device": "cpu", "valid_share": 0.0,
                 **json.loads(args.ours_overrides), **extra}
    result = run_experiment(ds, family, overrides, split=split, progress=Progress())
    history = result.model.training_history()
    curve = [{"epoch": h["epoch"], "cpu_s": h["cpu_seconds"], "valid_ndcg@10": h["metrics"]["ndcg@10"]}
             for h in history if "ndcg@10" in h.get("metrics", {})]
    report = result.model.fit_report()
    best = next((c for c in curve if c["epoch"] == report.get("best_epoch")), None)
    return {"library": "recsys_core", "model": args.model, "seed": args.seed,
            **{k: result.metrics[k] for k in METRICS}, "users": result.metrics["users"],
            "cpu_s_to_best": best and best["cpu_s"], "cpu_s_total": round(result.cpu_s, 1),
            "cpu_s_per_epoch": round(history[-1]["cpu_seconds"] / len(history), 2) if history else None,
            "epochs": len(history), "best_epoch": report.get("best_epoch"), "stopped": report.get("stopped"),
            "best_valid_ndcg@10": best and best["valid_ndcg@10"], "curve": curve,
            # members > 1: the curve and the best above are the first member's; this is the ensemble's validation
            **({"members": report["members"]} if "members" in report else {}),
            # transitions="auto": the prior's weight and the validation NDCG@10 of each weight tried
            **({"transitions": report["transitions"]} if "transitions" in report else {}),
            "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def load_split(spec: str, subset_users: int = 0):
    """The dataset and `leave_one_out` of it; with `subset_users`, only the first that many users (a smoke test)."""
    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.data.splits import EvalSet, Split, leave_one_out

    ds = resolve_dataset(spec, None)
    split = leave_one_out(ds)
    if subset_users:
        keep = split.test.users < subset_users
        train = [s if u < subset_users else s[:0] for u, s in enumerate(split.train)]

        def cut(e: EvalSet) -> EvalSet:
            return EvalSet(e.users[keep], [h for h, k in zip(e.histories, keep) if k],
                           [t for t, k in zip(e.targets, keep) if k])

        split = Split(split.kind, train, cut(split.valid), cut(split.test), split.n_items, split.holdout)
    return ds, split


def eval_server(args: argparse.Namespace) -> None:
    """Answer each line naming an NPY of validation scores with our NDCG@10 over the seed's validation users
    (for the peers' early stopping), and the CPU seconds it took."""
    import torch

    torch.set_num_threads(1)
    from recsys_core.evaluation.metrics import rank_metrics

    data = read_split(Path(args.split_dir))
    rows = np.load(Path(args.split_dir) / f"valid_rows_seed{args.seed}.npy")
    histories = [data["valid_histories"][i] for i in rows]
    targets = [data["valid_targets"][i:i + 1] for i in rows]
    for line in sys.stdin:
        start = time.process_time()
        scores = torch.from_numpy(np.load(line.strip()))
        ndcg = float(rank_metrics(scores, targets, exclude=histories, ks=(10,))["ndcg@10"].mean())
        print(json.dumps({"ndcg@10": ndcg, "cpu_s": time.process_time() - start}), flush=True)


# ---- the report --------------------------------------------------------------------------------------------


def combine(runs: list[dict]) -> dict:
    """One row per library and model: metrics as {mean, std, seeds}, costs as means over seeds."""
    ok = [r for r in runs if "error" not in r]
    first = runs[0]
    row = {"library": first["library"], "model": first["model"]}
    if not ok:
        return row | {"error": first["error"], "runs": runs}
    for key in METRICS:
        values = np.array([r[key] for r in ok], dtype=float)
        row[key] = {"mean": round(float(values.mean()), 4),
                    "std": round(float(values.std(ddof=1)), 4) if len(values) > 1 else None,
                    "seeds": [r["seed"] for r in ok]}
    for key in ("cpu_s_to_best", "cpu_s_total", "cpu_s_per_epoch", "peak_mem_mb", "best_valid_ndcg@10"):
        values = [r[key] for r in ok if r.get(key) is not None]
        row[key] = round(float(np.mean(values)), 4 if key.startswith("best") else 1) if values else None
    ensembles = [r["members"]["valid"]["ndcg@10"] for r in ok if "valid" in r.get("members", {})]
    if ensembles:  # members > 1: the ensemble's validation, next to its first member's above
        row["members_valid_ndcg@10"] = round(float(np.mean(ensembles)), 4)
    weights = [r["transitions"]["weight"] for r in ok if "transitions" in r]
    if weights:  # transitions="auto": the weight each seed's validation chose
        row["transitions_weights"] = weights
    row["runs"] = runs
    return row


def our_cpu_s_to_match(ours: dict, target: float | None) -> float | None:
    """Mean over our seeds of the first CPU second our validation NDCG@10 reached `target` (None if never)."""
    if target is None or "runs" not in ours:
        return None
    hits = []
    for run in (r for r in ours["runs"] if "error" not in r):  # the seeds that finished
        hit = next((c["cpu_s"] for c in run.get("curve", []) if c["valid_ndcg@10"] >= target), None)
        if hit is None:
            return None
        hits.append(hit)
    return round(float(np.mean(hits)), 1) if hits else None


def run_all(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    loads = [os.getloadavg()]
    ds, split = load_split(args.dataset, args.subset_users)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        folder = Path(args.split_dir or tmp)  # --split-dir keeps the exchange files (debugging)
        export_split(split, folder, args.seeds, args.max_valid_users, ds.name)
        checked = check_export(split, folder)
        jobs = [(run_ours, ("recsys_core", m)) for m in args.ours] + [(run_peer, lm) for lm in args.peers]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # threads only wait on subprocesses
            futures = [[pool.submit(_timed, fn, args, lm, s, folder, loads) for s in args.seeds] for fn, lm in jobs]
            rows = [combine([f.result() for f in runs]) for runs in futures]
    ours = {r["model"]: r for r in rows if r["library"] == "recsys_core"}
    for row in rows:
        if row["library"] != "recsys_core":
            mine = ours.get(MATCH[row["model"]])
            row["our_cpu_s_to_match"] = our_cpu_s_to_match(mine, row.get("best_valid_ndcg@10")) if mine else None
            row["matched_against"] = MATCH[row["model"]] if mine else None
    return {
        "benchmark": "peers", "dataset": ds.name, "split": "leave_one_out", "users_checked_against_split": checked,
        "subset_users": args.subset_users or None, "n_items": int(split.n_items), "eval_users": len(split.test),
        "protocol": "full ranking over all items, history excluded, pessimistic ties (recsys_core rank_metrics)",
        "early_stopping": f"validation NDCG@10 on our validation users, patience {args.patience}",
        "cpu_cap_s": args.cpu_cap, "threads": 1, "nice": 19, "seeds": args.seeds, "peers_device": args.device,
        "ours_overrides": json.loads(args.ours_overrides),
        "date": dt.date.today().isoformat(), "results": rows, "wall_s": round(time.perf_counter() - started, 1),
        "load_avg": [[round(x, 2) for x in la] for la in loads], "cpus": os.cpu_count(),
        "our_cpu_s_to_match_means": "CPU s until our validation NDCG@10 first reaches the peer's best validation NDCG@10",
    }


def table(report: dict) -> str:
    """The side-by-side table of one results file, as Markdown."""
    head = ("| library | model | NDCG@10 | HR@10 | seeds | CPU s to best | CPU s/epoch | peak MB | stopped "
            "| our CPU s to match |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['library']} | {r['model']} | error: {r['error']} |||||||| ")
            continue
        n, h = r["ndcg@10"], r["hr@10"]
        spread = (lambda m: f"{m['mean']:.4f}" + (f" ± {m['std']:.4f}" if m["std"] is not None else ""))
        stops = ",".join(sorted({str(x.get("stopped")) for x in r["runs"]}))
        lines.append(f"| {r['library']} | {r['model']} | {spread(n)} | {spread(h)} | {len(n['seeds'])} "
                     f"| {r['cpu_s_to_best']} | {r['cpu_s_per_epoch']} | {r['peak_mem_mb']} | {stops} "
                     f"| {r.get('our_cpu_s_to_match', '')} |")
    return "\n".join(lines)


# ---- setup -------------------------------------------------------------------------------------------------


def setup() -> None:
    """The peers venv (`PEERS_VENV`): its own numpy<2 and peers, reusing the main venv's torch through a .pth file that
    sys.path appends after the venv's own site-packages (so the peers' pins win, torch is found)."""
    import sysconfig

    if not PEERS_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    purelib = subprocess.run([str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    main_site = sysconfig.get_paths()["purelib"]
    Path(purelib, "zz_main_venv.pth").write_text(main_site + "\n")
    subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-r", str(ROOT / "bench" / "requirements-peers.txt")],
                   check=True)
    subprocess.run([str(PEERS_PY), "-c", ("import numpy, torch, rectools, recbole; assert numpy.__version__ < '2'; "
                    "print('numpy', numpy.__version__, 'torch', torch.__version__, torch.ones(2) @ torch.ones(2))")],
                   check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="create the peers venv (PEERS_VENV) and install the peers")
    p.add_argument("--dataset", help="'demo' or a MovieLens/MovieTweetings folder or file")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--cpu-cap", type=float, default=900.0, help="CPU seconds per training run (all libraries)")
    p.add_argument("--patience", type=int, default=5, help="validations without improvement before a peer stops")
    p.add_argument("--max-valid-users", type=int, default=5000, help="our loop's default validation sample")
    p.add_argument("--ours", default="sasrec,bert4rec",
                   help='our models, comma-separated; a variant adds settings after @: "sasrec@max_len=50;dropout=0.2"')
    p.add_argument("--ours-overrides", default="{}",
                   help='JSON settings for our models, e.g. the CPU demo profile: \'{"patience": 5, "max_steps": 2700}\'')
    p.add_argument("--peers", default=",".join(f"{lib}:{m}" for lib, m in PEERS))
    p.add_argument("--subset-users", type=int, default=0, help="only the first N users (smoke test)")
    p.add_argument("--out", help="JSON path (default bench/results/peers-<dataset>-<date>.json)")
    p.add_argument("--reuse-only", action="store_true", help="with --split-dir: report finished runs, train nothing")
    p.add_argument("--table", help="print the Markdown table of a results JSON and exit")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (each on one thread)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where the RecTools peers train (auto: CUDA when present; their long runs); ours and "
                        "RecBole stay on CPU")
    p.add_argument("--worker-ours", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--eval-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--split-dir", help="keep the exchange files (split, scores) in this folder")
    args = p.parse_args()
    if args.setup:
        setup()
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.eval_server:
        eval_server(args)
        return
    if args.worker_ours:
        Path(args.out).write_text(json.dumps(worker_ours(args)))
        return
    if not args.dataset or (args.dataset != "demo" and not Path(args.dataset).exists()):
        print(f"[peers] dataset {args.dataset!r} not found: skipped", file=sys.stderr)
        return
    if not PEERS_PY.exists():
        sys.exit(f"[peers] {PEERS_VENV} is missing: run `.venv/bin/python bench/peers.py --setup` first")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    global REUSE_ONLY
    REUSE_ONLY = args.reuse_only
    args.ours = [m for m in args.ours.split(",") if m]
    for entry in args.ours:
        ours_variant(entry)  # an unknown model stops here, before any training
    args.peers = [tuple(x.split(":")) for x in args.peers.split(",") if x]
    report = run_all(args)
    text = json.dumps(report, indent=2)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"peers-{report['dataset']}-{dt.date.today():%Y%m%d}.json"
    out.write_text(text + "\n")
    print(f"[peers] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
