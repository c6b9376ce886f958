"""Tune and time the sequential transformers on MovieLens-100k (leave-one-out, full ranking).

    python bench/seq_tune.py --family bert4rec --set epochs=100 --set hidden=64
    python bench/seq_tune.py --family sasrec --budget 600 --threads 1
    python bench/seq_tune.py --speed              # steps/s: naive BertForMaskedLM vs our BERT4Rec step

Prints one JSON line per run (config, validation curve of NDCG@10 against training seconds, test
NDCG@10/HR@10, EASE reference) and appends it to bench/results/seq_tune.jsonl. `--threads` exists
because on a shared 2-core machine two OpenMP threads can be far slower than one (a descheduled
thread stalls every barrier); the engine itself leaves torch's thread count alone.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"

import numpy as np
import pandas as pd
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models import FAMILIES
from recsys_core.models.settings import build_config
from recsys_core.progress import Progress


def load_split():
    frame = pd.read_csv(DATA, sep="\t", names=["user", "item", "rating", "timestamp"])
    ds = build_dataset(frame, name="ml-100k")
    return ds, leave_one_out(ds)


def ease_reference(ds, split) -> dict:
    model = FAMILIES["ease"]().fit(ds, split=split)
    out = evaluate(model, split.test, ks=(10,))
    return {"ndcg@10": out["ndcg@10"], "hr@10": out["hr@10"], "config": asdict(model.config)}


def run(family: str, overrides: dict, budget: float, save: str = "") -> dict:
    ds, split = load_split()
    cls = FAMILIES[family]
    cfg = build_config(cls.config_class, {"cpu_budget_s": budget, **overrides})
    curve = []

    def on_event(e):
        if e.metrics:
            curve.append((round(e.elapsed_s, 1), e.epoch, round(e.metrics.get("ndcg@10", float("nan")), 4)))
            print(f"  {e.elapsed_s:7.1f}s epoch {e.epoch:4d} loss {e.loss or float('nan'):.3f} "
                  f"valid ndcg@10 {e.metrics.get('ndcg@10', float('nan')):.4f}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    model = cls(cfg).fit(ds, split=split, progress=Progress(on_event))
    wall = time.perf_counter() - started
    test = evaluate(model, split.test, ks=(10,))
    if save:
        model.save(save)
    return {"family": family, "overrides": overrides, "config": asdict(cfg), "wall_s": round(wall, 1),
            "report": model.fit_report(), "curve": curve, "test_ndcg@10": round(test["ndcg@10"], 4),
            "test_hr@10": round(test["hr@10"], 4), "threads": torch.get_num_threads()}


def speed(steps: int = 12) -> dict:
    """Training throughput on ML-100k: a naive BertForMaskedLM step (every batch padded to 200,
    logits over the catalogue at all 200 positions) against our BERT4Rec step (logits only at
    masked positions, length-bucketed batches) at the same shape, and at our defaults. Steps/s is
    measured on random batches; seconds/epoch = steps per epoch / steps per second."""
    from transformers import BertConfig, BertForMaskedLM

    from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
    from recsys_core.models.sequences import SequenceWindows
    from recsys_core.models.settings import build_config

    ds, split = load_split()
    n, rng = ds.n_items, np.random.default_rng(0)
    naive = BertForMaskedLM(BertConfig(vocab_size=n + 2, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=256, max_position_embeddings=200))
    naive_opt = torch.optim.AdamW(naive.parameters(), lr=1e-3)

    def naive_step(windows: SequenceWindows, batch: np.ndarray) -> None:
        tokens, _ = windows.padded(batch)
        full = np.zeros((len(batch), 200), dtype=np.int64)
        full[:, :tokens.shape[1]] = tokens
        ids = torch.from_numpy(full)
        labels = torch.where((torch.rand(ids.shape) < 0.2) & (ids > 0), ids, torch.full_like(ids, -100))
        loss = naive(input_ids=ids.masked_fill(labels >= 0, n + 1), attention_mask=(ids > 0).long(),
                     labels=labels).loss
        naive_opt.zero_grad()
        loss.backward()
        naive_opt.step()

    def ours(cfg: BERT4RecConfig):
        model = BERT4Rec(cfg)
        model._remember_catalogue(ds)
        model.module_ = model._build()
        opt = torch.optim.AdamW(model.module_.parameters(), lr=1e-3)

        def step(windows: SequenceWindows, batch: np.ndarray) -> None:
            tokens, lengths = windows.padded(batch)
            loss = model._batch_loss(torch.from_numpy(tokens), torch.from_numpy(lengths), rng)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    default = build_config(BERT4RecConfig, {"device": "cpu"})
    cases = {
        "naive_bert_for_masked_lm_len200_b128": (naive_step, 200, 128),
        "bert4rec_masked_only_bucketed_len200_b128": (ours(build_config(BERT4RecConfig, {"device": "cpu", "max_len": 200, "mask_prob": 0.2})),
                                                      200, 128),
        "bert4rec_defaults": (ours(default), default.max_len, default.train.batch_size),
    }
    out = {}
    for name, (step, max_len, batch_size) in cases.items():
        windows = SequenceWindows(split.train, max_len, max_len // 2)
        batches = windows.batches(batch_size, rng)
        step(windows, batches[0])
        started = time.perf_counter()
        for i in range(steps):
            step(windows, batches[(i + 1) % len(batches)])
        per_step = (time.perf_counter() - started) / steps
        out[name] = {"steps_per_s": round(1 / per_step, 2), "seconds_per_epoch": round(per_step * len(batches), 1),
                     "steps_per_epoch": len(batches)}
    out["threads"] = torch.get_num_threads()
    return out


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="bert4rec", choices=["bert4rec", "sasrec"])
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--budget", type=float, default=600.0, help="training-time budget in seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--speed", action="store_true", help="measure steps/s instead of training")
    parser.add_argument("--ease", action="store_true", help="also measure the EASE reference")
    parser.add_argument("--save", default="", help="save the trained model into this folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_file():
        sys.exit(f"ML-100k not found at {DATA}")
    if args.speed:
        result = {"speed_steps_per_s": speed()}
    else:
        overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
        result = run(args.family, overrides, args.budget, args.save)
        if args.ease:
            result["ease"] = ease_reference(*load_split())
    line = json.dumps(result)
    print(line)
    with open(ROOT / "bench" / "results" / "seq_tune.jsonl", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
