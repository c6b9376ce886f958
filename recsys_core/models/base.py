"""The one model interface. Every page, benchmark and CLI command talks to models only through it.

A saved model is a folder: `config.json` (format version, family, hyperparameters, catalogue size
and digest), `item_ids.json` (index -> original item id) and `model.safetensors` (tensors). Loading
never unpickles anything, and migrates folders saved by older versions (`settings.migrate`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from recsys_core.data.dataset import Dataset, catalogue_digest
from recsys_core.data.splits import Split
from recsys_core.errors import ConfigError, ModelError
from recsys_core.models.settings import FORMAT_VERSION, build_config, migrate
from recsys_core.progress import Progress

FAMILIES: dict[str, type[Recommender]] = {}


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, declared by the model (as scikit-learn's estimator tags): callers ask
    `model.capabilities` and never probe a model's attributes or family name."""

    item_embeddings: bool = True  # item vectors whose cosine means "similar" (popularity's counts do not)
    text: bool = False  # reads items through their text: `item_text`, `encode_texts`, `text_vectors`
    cold_items: bool = False  # `add_items` makes items nobody interacted with recommendable
    order_aware: bool = False  # the order of a history changes its scores
    sampled_loss: bool = False  # can train on a sampled softmax instead of the full catalogue
    training_curves: bool = False  # `training_history` holds per-epoch loss / validation metrics


class Recommender(ABC):
    """Scores every catalogue item for any list of item-index histories."""

    family: ClassVar[str]
    description: ClassVar[str]  # one line for pickers: "Name: what it is"
    config_class: ClassVar[type]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.n_items_: int = 0
        self.item_ids_: list[str] = []
        self.version_: str = uuid.uuid4().hex  # new on every fit; a digest of the files for a loaded model

    @property
    def identity(self) -> str:
        """Stable key of exactly these weights, for caches shared across sessions (never `id(model)`)."""
        return f"{self.family}:{self.version_}"

    @property
    def capabilities(self) -> Capabilities:
        """What this model can do (some answers depend on its config)."""
        return Capabilities()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "family" in cls.__dict__:
            FAMILIES[cls.family] = cls

    @abstractmethod
    def fit(self, dataset: Dataset, progress: Progress | None = None, split: Split | None = None) -> Recommender:
        """Learn from `split.train` (all sequences when no split), early-stopping on `split.valid`."""

    @abstractmethod
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Float32 scores [len(histories), n_items] on the CPU; higher is better."""

    @abstractmethod
    def item_embeddings(self) -> np.ndarray:
        """One vector per item index, [n_items, dim]."""

    @abstractmethod
    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """One vector per history, in the same space as `item_embeddings` where the model has one."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors for safetensors."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state_tensors` (config and catalogue already restored)."""

    def training_history(self) -> list[dict]:
        """Per-epoch records (epoch, loss, step, metrics) of the last fit; empty for closed-form models."""
        return []

    def fit_report(self) -> dict:
        """How the last fit ended (best metric and epoch, why it stopped, steps, seconds); empty when trivial."""
        return {}

    def training_device(self) -> str:
        """Where the model trained or runs: "cuda", "mps" or "cpu" (closed-form models compute on the CPU)."""
        return "cpu"

    def training_memory(self, n_items: int) -> int | None:
        """Estimated peak bytes of one training step on a catalogue of `n_items` (None: no estimate)."""
        return None

    def item_text(self, item: int) -> str:
        """The text the model reads for an item index (models with `capabilities.text`)."""
        raise self._cannot("read item texts")

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit vectors [len(texts), dim] for free text, in the items' space (models with `capabilities.text`)."""
        raise self._cannot("encode free text")

    def text_vectors(self) -> torch.Tensor:
        """[n_items, dim] vectors of the item texts (models with `capabilities.text`)."""
        raise self._cannot("give item text vectors")

    def add_items(self, items: Any) -> np.ndarray:
        """Append items (`item_id` + metadata) to the catalogue; their new indices (`capabilities.cold_items`)."""
        raise self._cannot("score new items")

    def _cannot(self, what: str) -> ModelError:
        return ModelError(f"a {self.family} model cannot {what}", hint="train a text tower on this dataset")

    def read_extra_files(self, directory: Path) -> None:
        """Read files a family saves beside model.safetensors (default: none); `load_model` calls it first."""

    def _remember_catalogue(self, dataset: Dataset) -> None:
        self.version_ = uuid.uuid4().hex  # called at the start of every fit: new weights, new identity
        self.n_items_ = dataset.n_items
        self.item_ids_ = [str(i) for i in dataset.item_ids]

    def catalogue_digest(self) -> str:
        """Identity of the catalogue the model scores (its item ids in index order)."""
        return catalogue_digest(self.item_ids_)

    def fits(self, dataset: Dataset) -> bool:
        """True when the model scores exactly this dataset's items, in the same index order."""
        return self.n_items_ == dataset.n_items and self.catalogue_digest() == dataset.catalogue_digest

    def check_fits(self, dataset: Dataset) -> None:
        """ModelError unless `fits(dataset)`: the one answer to "does this model fit this dataset?"."""
        if self.fits(dataset):
            return
        same = "the same number of items but other ids or another order" if self.n_items_ == dataset.n_items \
            else f"{self.n_items_:,} items; the dataset has {dataset.n_items:,}"
        raise ModelError(f"this {self.family} model was trained on another catalogue than {dataset.name!r} ({same})",
                         hint="pick a model trained on this dataset version, or retrain one on the Train page")

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config) if is_dataclass(self.config) else dict(self.config)
        meta = {"format_version": FORMAT_VERSION, "family": self.family, "config": cfg, "n_items": self.n_items_,
                "catalogue": self.catalogue_digest()}
        (d / "config.json").write_text(json.dumps(meta, indent=2))
        (d / "item_ids.json").write_text(json.dumps(self.item_ids_))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
        save_file(tensors, str(d / "model.safetensors"))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        return load_model(directory)


def family_class(family: str) -> type[Recommender]:
    """The class registered under `family` (ConfigError naming the known ones otherwise)."""
    import recsys_core.models  # noqa: F401  registers every family

    if family not in FAMILIES:
        raise ConfigError(f"unknown model {family!r}", hint=f"choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def capabilities_of(family: str) -> Capabilities:
    """A family's capabilities with its default config, without loading or training anything."""
    return family_class(family)().capabilities


def config_from_dict(config_class: type, values: dict, file: str = "") -> Any:
    """The config of a saved model; a setting this version does not know is an error naming it."""
    try:
        return build_config(config_class, values)
    except ConfigError as err:
        raise ModelError(f"the saved config does not fit {config_class.__name__}: {err.message}", file=file,
                         hint="this folder was saved by another version of RecSys Explorer; retrain the model") from err


def load_model(directory: str | Path) -> Recommender:
    """Load any saved model folder, validating it before use."""
    d = Path(directory)
    for name in ("config.json", "item_ids.json", "model.safetensors"):
        if not (d / name).is_file():
            raise ModelError(f"model folder is missing {name}", file=str(d),
                            hint="pick a folder saved by RecSys Explorer (config.json + model.safetensors + item_ids.json)")
    try:
        meta = json.loads((d / "config.json").read_text())
        item_ids = json.loads((d / "item_ids.json").read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"invalid JSON ({err})", file=str(d)) from err
    family = meta.get("family")
    if family not in FAMILIES:
        import recsys_core.models  # noqa: F401  registers every family

    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}", file=str(d / "config.json"),
                        hint=f"known families: {sorted(FAMILIES)}")
    cls = FAMILIES[family]
    config_file = str(d / "config.json")
    model = cls(config_from_dict(cls.config_class, migrate(family, cls.config_class, meta, config_file), config_file))
    model.n_items_ = int(meta.get("n_items", -1))
    model.item_ids_ = [str(i) for i in item_ids]
    if len(model.item_ids_) != model.n_items_:
        raise ModelError("item_ids.json does not match n_items in config.json", file=str(d))
    if meta.get("catalogue", model.catalogue_digest()) != model.catalogue_digest():
        raise ModelError("item_ids.json is not the catalogue this model was saved with", file=str(d),
                         hint="the folder was edited or mixed with another model's files; re-export the model")
    model.read_extra_files(d)
    model.load_state_tensors(load_file(str(d / "model.safetensors")))
    model.version_ = _files_digest(d)
    return model


def _files_digest(directory: Path) -> str:
    """Digest of a model folder's three files: two loads of one folder share cached results."""
    digest = hashlib.sha256()
    for name in ("config.json", "item_ids.json", "model.safetensors"):
        with open(directory / name, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]
