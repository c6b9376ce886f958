"""Top-10 recommendation throughput (users/s) of the baselines on the ML-1M catalogue, CPU.

    python bench/scoring_speed.py                       # ../shared/data/ml-1m pairs, else synthetic
    python bench/scoring_speed.py --synthetic           # 6,040 users x 3,700 items, ~165 items/user

Times fit, then scoring every user's full history in batches of 1024 and taking the top 10 with
the history excluded (what the Recommend page and evaluation do). Best of --repeat runs, as wall
time and as process CPU time (the second is steadier on a shared machine; with --threads 1 it is
the single-core cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.data.dataset import build_dataset
from recsys_core.evaluation.metrics import top_k
from recsys_core.models import FAMILIES

PAIRS = ROOT.parent / "shared" / "data" / "ml-1m" / "ratings_user_movie_pairs.parquet"


def load(synthetic: bool) -> pd.DataFrame:
    if not synthetic and PAIRS.is_file():
        frame = pd.read_parquet(PAIRS)
        return pd.DataFrame({"user": frame["userID"], "item": frame["movieID"]})
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, 3701) ** 0.8  # long-tailed item popularity
    users = np.repeat(np.arange(6040), 165)
    items = rng.choice(3700, len(users), p=pop / pop.sum())
    return pd.DataFrame({"user": users, "item": items}).drop_duplicates()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--models", default="popularity,itemknn,ease")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = build_dataset(load(args.synthetic), name="ml-1m-pairs")
    hist = ds.sequences()
    rows = []
    for family in args.models.split(","):
        start = time.perf_counter()
        model = FAMILIES[family]().fit(ds)
        fit_s = time.perf_counter() - start
        wall, cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            for s in range(0, len(hist), args.batch):
                top_k(model.score(hist[s:s + args.batch]), 10, hist[s:s + args.batch])
            wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
        rows.append({"model": family, "users": ds.n_users, "items": ds.n_items, "fit_s": round(fit_s, 2),
                     "top10_wall_s": round(wall, 3), "users_per_s": round(ds.n_users / wall),
                     "top10_cpu_s": round(cpu, 3), "users_per_cpu_s": round(ds.n_users / cpu),
                     "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
