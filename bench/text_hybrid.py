"""Text tower (zero-shot, fine-tuned) and hybrid vs BERT4Rec on one dataset, leave-one-out, full ranking.

    python bench/text_hybrid.py --dataset ../shared/data/ml-100k --models zero_shot,fine_tuned
    python bench/text_hybrid.py --dataset ../shared/data/ml-100k --models bert4rec,hybrid \
        --seq '{"batch_size": 64, "lr": 0.002, "max_len": 100, "dropout": 0.1, "epochs": 25}'

Rows carry test NDCG@10 / HR@10 and fit time; with bert4rec and hybrid both run, the per-segment gain
(history length, target popularity) is added. One line of JSON per model is appended to
bench/results/text_hybrid-<dataset>-<YYYYMMDD>.jsonl. `--threads 1` is the default: on a busy shared
CPU, extra OpenMP threads stall far more than they help.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(name: str, text: dict, seq: dict, tower_dir: str):
    from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
    from recsys_core.models.hybrid import Hybrid, HybridConfig
    from recsys_core.models.settings import build_config
    from recsys_core.models.text_tower import TextTower, TextTowerConfig

    if name == "zero_shot":
        return TextTower(build_config(TextTowerConfig, {"mode": "zero_shot", **text}))
    if name == "fine_tuned":
        return TextTower(build_config(TextTowerConfig, {"mode": "fine_tune", **text}))
    if name == "bert4rec":
        return BERT4Rec(build_config(BERT4RecConfig, seq))
    if name == "hybrid":
        return Hybrid(build_config(HybridConfig, seq))
    if name == "hybrid_ft":  # text vectors of the fine-tuned tower trained earlier in this run
        if not tower_dir:
            raise SystemExit("hybrid_ft needs fine_tuned earlier in --models")
        return Hybrid(build_config(HybridConfig, {"text_tower_dir": tower_dir, **seq}))
    raise SystemExit(f"unknown model {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--models", default="zero_shot,fine_tuned,bert4rec,hybrid")
    p.add_argument("--text", default="{}", help="JSON overrides for the text tower")
    p.add_argument("--seq", default="{}", help="JSON overrides for bert4rec and the hybrid")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from recsys_core.data.resolve import resolve_dataset
    from recsys_core.data.splits import leave_one_out
    from recsys_core.evaluation.metrics import evaluate, train_popularity
    from recsys_core.models.hybrid import segment_gain

    ds = resolve_dataset(args.dataset, None)
    split = leave_one_out(ds)
    popularity = train_popularity(split)
    text, seq = json.loads(args.text), json.loads(args.seq)
    out = ROOT / "bench" / "results" / f"text_hybrid-{Path(args.dataset).name}-{dt.date.today():%Y%m%d}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    fitted, tower_dir = {}, ""
    scratch = tempfile.mkdtemp(prefix="text_hybrid-")
    for name in args.models.split(","):
        model = build(name, text, seq, tower_dir)
        start = time.perf_counter()
        model.fit(ds, split=split)
        fit_s = time.perf_counter() - start
        metrics = evaluate(model, split.test, item_popularity=popularity)
        row = {"model": name, "dataset": Path(args.dataset).name, "ndcg@10": round(metrics["ndcg@10"], 4),
               "hr@10": round(metrics["hr@10"], 4), "fit_s": round(fit_s, 1), "threads": args.threads,
               "device": model.training_device(), "config": dict(vars(model.config)),
               "fit_report": model.fit_report(),
               "valid_curve": [[h["epoch"], round(h["metrics"]["ndcg@10"], 4)]
                               for h in model.training_history() if "metrics" in h]}
        if name == "fine_tuned":
            tower_dir = str(model.save(Path(scratch) / "tower"))
        fitted[name] = model
        if name.startswith("hybrid") and "bert4rec" in fitted:
            gain = segment_gain(model, fitted["bert4rec"], split, names=(name, "bert4rec"))
            row["segments_vs_bert4rec"] = gain.round(4).to_dict("records")
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
