"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2 tests/ddp_worker.py OUT DATA.csv`.

In one process group (so the test pays for one start of two processes): BERT4Rec trained through
`run_experiment`, the text tower's distributed loss and gradient against the same batch in one piece,
and a short text tower fine-tune. Rank 0 writes what it saw to OUT/*.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from recsys_core.data import load_dataset
from recsys_core.data.item_schema import history_text
from recsys_core.errors import ModelError
from recsys_core.evaluation.metrics import evaluate, train_popularity
from recsys_core.models import distributed, loop
from recsys_core.models.text_tower import PairSampler, _ContrastiveTask, in_batch_loss, trainable_parameters
from recsys_core.training.experiment import make_model, make_split, run_experiment

# Long enough to learn the successor rule (NDCG@10 ~0.7-0.8 for every seed; the popularity plateau is ~0.22).
BERT4REC = {"max_len": 12, "hidden": 32, "layers": 1, "heads": 2, "dropout": 0.0, "epochs": 12, "batch_size": 32,
            "lr": 5e-3, "mask_last_prob": 0.3, "device": "cpu", "eval_every": 1, "patience": 0}
TOWER = {"mode": "fine_tune", "max_steps": 4, "batch_size": 8, "eval_every": 0, "eval_steps": 2, "max_valid_users": 40,
         "trainable_layers": 1, "device": "cpu", "text_history_items": 3}


def bert4rec(ds, split, out: Path) -> None:
    result = run_experiment(ds, "bert4rec", BERT4REC, split=split)
    sharded_test_evaluation(result.model, split, out)
    if distributed.is_main():
        report = result.model.fit_report()
        (out / "bert4rec.json").write_text(json.dumps({"metrics": result.metrics, "stopped": report["stopped"],
                                                       "history": result.model.training_history()}))
    # The guard at the end of training: weights that differ between processes must not pass silently.
    module = result.model.module_
    with torch.no_grad():
        if distributed.rank() == 1:
            next(module.parameters()).view(-1)[0] += 1e-3
    try:
        distributed.check_in_sync(module)
        caught = ""
    except ModelError as err:
        caught = str(err)
    (out / f"sync-{distributed.rank()}.txt").write_text(caught)


def sharded_test_evaluation(model, split, out: Path) -> None:
    """The test split scored by both processes (each its share of the users) against one process scoring
    every user; each rank writes both, so the test sees that every process got the whole result."""
    pop = train_popularity(split)
    both = evaluate(model, split.test, item_popularity=pop, per_user=True, shards=distributed.evaluation_shards())
    alone = evaluate(model, split.test, item_popularity=pop, per_user=True)
    few = distributed.eval_subset(split.test, slice(0, 6))  # 3 users each: top-1 coverage needs the union
    few_both, few_alone = (evaluate(model, few, ks=(1,), per_user=True, shards=s)
                           for s in (distributed.evaluation_shards(), None))
    runs = {"sharded": both, "one": alone, "few_sharded": few_both, "few_one": few_alone}
    (out / f"test-eval-{distributed.rank()}.json").write_text(json.dumps(
        {name: {"metrics": {k: v for k, v in r.items() if k != "per_user"},
                "per_user": r["per_user"].to_dict(orient="list")} for name, r in runs.items()}))


def tower_gradient(ds, split, out: Path) -> None:
    """One step's loss and gradient of the text tower: two processes, each with half of a batch of 8
    pairs (docs gathered across them), against the whole batch in one piece, dropout off in both."""
    model = make_model("text_tower", TOWER)
    model._remember_catalogue(ds)
    from recsys_core.data.item_schema import item_texts, item_titles

    model.item_texts_, model.item_titles_ = item_texts(ds.items), item_titles(ds.items)
    encoder = model.encoder.eval()
    trainable_parameters(encoder, model.config.trainable_layers)
    sampler = PairSampler(split.train, model.config.text_history_items)
    log_q = sampler.log_frequency(model.n_items_)
    batch = np.arange(8) * 7
    params = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    histories, targets = sampler.pairs(batch)
    queries = [history_text(model.item_titles_, h, model.config.text_history_items) for h in histories]
    q = model._embed_with_grad(queries, model.config.max_history_tokens)
    d = model._embed_with_grad([model.item_texts_[int(t)] for t in targets], model.config.max_item_tokens)
    t = torch.as_tensor(targets)
    whole = in_batch_loss(q, d, t, model.config.scale, log_q[t])
    whole.backward()
    expected = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    encoder.zero_grad(set_to_none=True)
    task = _ContrastiveTask(model, sampler, None, steps=1)
    run = loop._Run(task, model.config.train, torch.device("cpu"), 1, "ndcg@10")
    share, mean = loop._share_of_loss(run, batch, np.random.default_rng(0))
    share.backward()
    # One relative error over the whole gradient: some entries are zero in exact arithmetic (attention's key
    # bias cannot change a softmax over keys) and only float noise in either computation.
    got = torch.cat([params[n].grad.flatten() for n in expected])
    want = torch.cat([g.flatten() for g in expected.values()])
    diff = float((got - want).norm() / want.norm())
    if distributed.is_main():
        (out / "tower_gradient.json").write_text(json.dumps({"whole": float(whole), "sharded": mean,
                                                             "max_rel_grad_diff": diff, "n_params": len(expected)}))


def tower_fit(ds, split, out: Path) -> None:
    result = run_experiment(ds, "text_tower", TOWER, split=split)
    model = result.model
    vectors = model.item_vectors_.clone()
    in_one_piece = model.encode(model.item_texts_)  # gathered shards must land in catalogue order
    if distributed.is_main():
        (out / "tower.json").write_text(json.dumps({
            "fine_tuned": model.fine_tuned_, "history": model.training_history(), "recipe": model.user_recipe_,
            "recipe_scores": model.recipe_scores_, "metrics": result.metrics,
            "gathered_vs_one_piece": float((vectors - in_one_piece).abs().max())}))


def main() -> None:
    out, data = Path(sys.argv[1]), sys.argv[2]
    distributed.init_from_env()
    ds, _ = load_dataset(data, name="successor")
    split = make_split(ds)
    try:
        bert4rec(ds, split, out)
        tower_gradient(ds, split, out)
        tower_fit(ds, split, out)
    finally:
        distributed.close()


if __name__ == "__main__":
    main()
