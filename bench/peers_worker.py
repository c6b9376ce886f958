"""One peer training run (RecTools or RecBole) on the split `bench/peers.py` exported; runs in the peers venv (bench/peers.py: PEERS_VENV).

    ~/.cache/recsys-explorer/peers-venv/bin/python bench/peers_worker.py --library recbole --model SASRec --seed 0 \
        --split-dir /tmp/peers-x --cpu-cap 900 --patience 5 --out /tmp/peers-x/recbole-SASRec-0.json

Each library trains with its own defaults (architecture, optimiser, loss, masking) on exactly our training
sequences. After every epoch the worker scores the validation users over the full catalogue and asks an
evaluator process in the main venv (`peers.py --eval-server`, our `rank_metrics`) for NDCG@10: the best
epoch's weights are kept, training stops after `patience` epochs without improvement or past the CPU cap.
The test users' full-catalogue scores go to an NPY file that `peers.py` ranks with the same evaluator.
Items a library never saw in training (it has no embedding for them) get a score below every other.

Only `read_split` is imported by the main venv (tests, peers.py): it needs numpy alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAIN_PY = ROOT / ".venv" / "bin" / "python"


def read_split(folder: Path) -> dict:
    """The exported split: train sequences per user, and per evaluated user its validation/test history and target.

    Leave-one-out: the validation history is the user's training sequence, the test history adds the
    validation target."""
    folder = Path(folder)
    flat, indptr = np.load(folder / "train_items.npy"), np.load(folder / "train_indptr.npy")
    train = np.split(flat, indptr[1:-1]) if len(indptr) > 1 else []
    users = np.load(folder / "eval_users.npy")
    valid_t, test_t = np.load(folder / "valid_targets.npy"), np.load(folder / "test_targets.npy")
    valid_h = [train[u] for u in users]
    test_h = [np.append(h, t) for h, t in zip(valid_h, valid_t)]
    meta = json.loads((folder / "meta.json").read_text())
    return {"train": train, "eval_users": users, "valid_histories": valid_h, "valid_targets": valid_t,
            "test_histories": test_h, "test_targets": test_t, "n_items": meta["n_items"], "meta": meta}


# ---- validation through our evaluator ---------------------------------------------------------------


class Validator:
    """Early stopping on our NDCG@10 over our validation users, computed by a main-venv evaluator process.

    The evaluator's CPU seconds are added to this run's, since our models' budgets count validation too."""

    def __init__(self, args: argparse.Namespace, data: dict) -> None:
        self.folder, self.patience, self.cap = Path(args.split_dir), args.patience, args.cpu_cap
        self.rows = np.load(self.folder / f"valid_rows_seed{args.seed}.npy")
        self.histories = [data["valid_histories"][i] for i in self.rows]
        self.tag = f"{args.library}-{args.model}-{args.seed}{args.tag}"
        self.server = subprocess.Popen(
            [str(MAIN_PY), str(ROOT / "bench" / "peers.py"), "--eval-server", "--split-dir", str(self.folder),
             "--seed", str(args.seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.best, self.best_epoch, self.bad, self.epoch = -1.0, 0, 0, 0
        self.curve: list[dict] = []
        self.eval_cpu = 0.0
        self.best_state = None
        self.setup_cpu = 0.0

    def start(self) -> None:
        """Start the clock at training, as our loop's does: imports and file reading are not training."""
        self.setup_cpu = time.process_time()

    def cpu(self) -> float:
        return time.process_time() - self.setup_cpu + self.eval_cpu

    def check(self, scores: np.ndarray, state: dict) -> bool:
        """Record this epoch's validation; keep `state` (a CPU copy) if best; True when training should stop."""
        self.epoch += 1
        path = self.folder / f"valid-scores-{self.tag}.npy"
        np.save(path, scores.astype(np.float32))
        self.server.stdin.write(f"{path}\n")
        self.server.stdin.flush()
        reply = json.loads(self.server.stdout.readline())
        self.eval_cpu += reply["cpu_s"]
        ndcg = reply["ndcg@10"]
        self.curve.append({"epoch": self.epoch, "cpu_s": round(self.cpu(), 2), "valid_ndcg@10": round(ndcg, 5)})
        print(f"[{self.tag}] epoch {self.epoch}: valid ndcg@10 {ndcg:.4f}, cpu {self.cpu():.0f}s", file=sys.stderr,
              flush=True)
        if ndcg > self.best:
            self.best, self.best_epoch, self.bad = ndcg, self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
        else:
            self.bad += 1
        self.stop_reason = "early_stop" if self.bad >= self.patience else "cpu_budget" if self.cpu() >= self.cap else None
        return self.stop_reason is not None

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)

    def report(self) -> dict:
        best = self.curve[self.best_epoch - 1] if self.best_epoch else None
        return {"best_epoch": self.best_epoch, "epochs": self.epoch, "stopped": getattr(self, "stop_reason", None),
                "best_valid_ndcg@10": round(self.best, 5), "cpu_s_to_best": best and best["cpu_s"],
                "cpu_s_total": round(self.cpu(), 1), "cpu_s_setup": round(self.setup_cpu, 1), "cpu_s_per_epoch": round(self.cpu() / max(self.epoch, 1), 2),
                "curve": self.curve}


def to_catalogue(scores, known: np.ndarray, n_items: int) -> np.ndarray:
    """[b, n_library_items] -> [b, n_items] in our item order; items the library does not know score lowest."""
    scores = scores.detach().float().cpu().numpy()
    out = np.empty((scores.shape[0], n_items), np.float32)
    lib_cols = known[known >= 0]
    floor = scores[:, lib_cols].min(axis=1, keepdims=True) - 1.0 if len(lib_cols) else 0.0
    out[:] = floor
    ours = np.flatnonzero(known >= 0)
    out[:, ours] = scores[:, known[ours]]
    return out


def torch_device(name: str):
    """cpu, cuda, or auto: CUDA when this machine has it. The CPU cap still counts this process's CPU seconds."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("[peers] --device cuda: this machine has no CUDA device")
    return torch.device(name)


# ---- RecTools ----------------------------------------------------------------------------------------------

_RT: dict = {}  # what the Lightning callback needs; the trainer is deep-copied, so it cannot hold references


def rectools_run(args: argparse.Namespace, data: dict, validator: Validator) -> np.ndarray:
    import pandas as pd
    from pytorch_lightning import Callback, Trainer, seed_everything
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import BERT4RecModel, SASRecModel

    class EpochValidation(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            scores = rectools_scores(pl_module.torch_model, _RT["prep"], _RT["histories"], data["n_items"])
            pl_module.torch_model.train()
            if validator.check(scores, pl_module.torch_model.state_dict()):
                trainer.should_stop = True

    def trainer() -> Trainer:
        return Trainer(max_epochs=10_000, min_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                       logger=False, enable_checkpointing=False, accelerator=device.type, devices=1,
                       precision="bf16-mixed" if device.type == "cuda" else "32-true", callbacks=[EpochValidation()])

    device = torch_device(args.device)
    seed_everything(args.seed, workers=True)
    users = np.repeat(np.arange(len(data["train"])), [len(s) for s in data["train"]])
    items = np.concatenate(data["train"])
    order = np.concatenate([np.arange(len(s)) for s in data["train"]])
    # Our order, as timestamps RecTools sorts by (stable): one second per position within each user.
    frame = pd.DataFrame({Columns.User: users, Columns.Item: items, Columns.Weight: 1.0,
                          Columns.Datetime: pd.to_datetime(order, unit="s")})
    cls = {"SASRecModel": SASRecModel, "BERT4RecModel": BERT4RecModel}[args.model]
    # Every setting not in --params (the tuner's trial) is the library's default.
    model = cls(get_trainer_func=trainer, **json.loads(args.params))
    _RT.update(prep=model.data_preparator, histories=validator.histories)
    validator.start()
    model.fit(Dataset.construct(frame))
    if args.valid_only:  # a tuner's trial: the test users are never scored
        return None
    net = model.torch_model
    net.load_state_dict(validator.best_state)
    net.to(device)
    return rectools_scores(net, model.data_preparator, data["test_histories"], data["n_items"])


def rectools_scores(net, prep, histories: list[np.ndarray], n_items: int, batch: int = 256) -> np.ndarray:
    """Full-catalogue scores of `histories` (our item indices) the way RecTools' recommend() computes them."""
    import torch

    ext = prep.item_id_map.external_ids  # our item indices, after the library's extra tokens (PAD, MASK)
    lookup = np.full(n_items, -1, np.int64)  # our item -> RecTools internal id, -1 if never seen in training
    lookup[np.asarray(ext[prep.n_item_extra_tokens:], dtype=np.int64)] = np.arange(prep.n_item_extra_tokens, len(ext))
    net.eval()
    out = []
    device = next(net.parameters()).device
    with torch.no_grad():
        item_embs = net.item_model.get_all_embeddings()
        items_out = net.similarity_module.item_tower_forward(item_embs)
        for start in range(0, len(histories), batch):
            sessions = [lookup[h][lookup[h] >= 0].tolist() for h in histories[start:start + batch]]
            x = {k: v.to(device) for k, v in prep._collate_fn_recommend([(s, [1.0] * len(s), {})
                                                                        for s in sessions]).items()}
            user = net.encode_sessions(x, item_embs)[:, -1, :]
            user = net.similarity_module.session_tower_forward(user)
            out.append(to_catalogue(user @ items_out.T, lookup, n_items))
    return np.concatenate(out)


# ---- RecBole -----------------------------------------------------------------------------------------------


def recbole_files(data: dict, folder: Path, max_len: int) -> None:
    """RecBole's pre-split ("benchmark") atomic files: every prefix of every training sequence predicts the
    next item (what RecBole's own augmentation makes), plus one validation and one test row per evaluated user
    so that RecBole's item map holds every catalogue item those rows name."""
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"

    def row(u: int, hist: np.ndarray, target: int) -> str:
        return f"{u}\t{' '.join(map(str, hist[-max_len:]))}\t{target}\n"

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "peer.train.inter", "w") as f:
        f.write(head)
        for u, seq in enumerate(data["train"]):
            f.writelines(row(u, seq[:t], int(seq[t])) for t in range(1, len(seq)))
    for part in ("valid", "test"):
        with open(folder / f"peer.{part}.inter", "w") as f:
            f.write(head)
            f.writelines(row(int(u), h, int(t)) for u, h, t in zip(data["eval_users"], data[f"{part}_histories"],
                                                                     data[f"{part}_targets"]) if len(h))


def recbole_run(args: argparse.Namespace, data: dict, validator: Validator) -> np.ndarray:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import BERT4Rec, SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    folder = Path(args.split_dir) / f"recbole-{args.model}-{args.seed}"
    max_len = 50  # RecBole's default MAX_ITEM_LIST_LENGTH
    recbole_files(data, folder / "peer", max_len)
    cls = {"SASRec": SASRec, "BERT4Rec": BERT4Rec}[args.model]
    config = Config(model=cls, dataset="peer", config_dict={
        "data_path": str(folder), "benchmark_filename": ["train", "valid", "test"], "seed": args.seed,
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "MAX_ITEM_LIST_LENGTH": max_len,
        "train_neg_sample_args": None, "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": str(folder / "saved"), "log_wandb": False, "state": "WARNING",
        "eval_args": {"order": "TO", "split": {"LS": "valid_and_test"}, "mode": "full", "group_by": "user"}})
    init_seed(args.seed, reproducibility=True)
    torch.set_num_threads(1)
    dataset = create_dataset(config)
    train_data, _valid, _test = data_preparation(config, dataset)
    model = cls(config, train_data.dataset)
    trainer = Trainer(config, model)
    token_id = dataset.field2token_id["item_id"]
    lookup = np.array([token_id.get(str(i), -1) for i in range(data["n_items"])], np.int64)
    epoch = 0
    validator.start()
    while True:
        model.train()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        epoch += 1
        if validator.check(recbole_scores(model, validator.histories, lookup, max_len), model.state_dict()):
            break
    model.load_state_dict(validator.best_state)
    return recbole_scores(model, data["test_histories"], lookup, max_len)


def recbole_scores(model, histories: list[np.ndarray], lookup: np.ndarray, max_len: int,
                   batch: int = 256) -> np.ndarray:
    """Full-catalogue scores via the model's own `full_sort_predict` (its metrics are not used: RecBole's
    sequential full-sort evaluation does not exclude history items)."""
    import torch
    from recbole.data.interaction import Interaction

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(histories), batch):
            seqs = [lookup[h][lookup[h] >= 0][-max_len:] for h in histories[start:start + batch]]
            x = np.zeros((len(seqs), max_len), np.int64)
            for i, s in enumerate(seqs):
                x[i, :len(s)] = s
            inter = Interaction({model.ITEM_SEQ: torch.from_numpy(x),
                                 model.ITEM_SEQ_LEN: torch.tensor([max(len(s), 1) for s in seqs])})
            out.append(to_catalogue(model.full_sort_predict(inter), lookup, len(lookup)))
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", choices=("rectools", "recbole"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--cpu-cap", type=float, default=900.0)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--params", default="{}", help="RecTools model settings over its defaults (JSON), e.g. a trial's")
    p.add_argument("--valid-only", action="store_true", help="validation only: no test scores (a tuner's trial)")
    p.add_argument("--tag", default="", help="added to this run's file names (a tuner's trial)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when there is one); RecTools only")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole's pandas idioms, one per field
    import torch

    torch.set_num_threads(1)
    data = read_split(Path(args.split_dir))
    validator = Validator(args, data)
    try:
        scores = (rectools_run if args.library == "rectools" else recbole_run)(args, data, validator)
    finally:
        validator.close()
    scores_file = Path(args.split_dir) / f"test-scores-{args.library}-{args.model}-{args.seed}{args.tag}.npy"
    if scores is not None:
        np.save(scores_file, scores)
    row = {"library": args.library, "model": args.model, "seed": args.seed, **validator.report(),
           "params": json.loads(args.params), "device": args.device,
           "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "scores_file": str(scores_file) if scores is not None else None}
    Path(args.out).write_text(json.dumps(row))


if __name__ == "__main__":
    main()
