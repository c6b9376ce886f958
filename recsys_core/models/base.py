"""The one model interface. Every page, benchmark and CLI command talks to models only through it.

A saved model is a folder: `config.json` (format version, family, hyperparameters, catalogue size
and digest), `item_ids.json` (index -> original item id) and `model.safetensors` (tensors). Loading
never unpickles anything, and migrates folders saved by older versions (`settings.migrate`). The weights are
mapped from the file, copy-on-write (`map_tensors`): processes that load one model share its pages.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from recsys_core.data.dataset import Dataset, catalogue_digest
from recsys_core.data.splits import Split
from recsys_core.errors import ConfigError, DataError, ModelError, RecsysError
from recsys_core.models.settings import FORMAT_VERSION, TRAIN, build_config, flat_fields, flatten_config, migrate
from recsys_core.progress import Progress

FAMILIES: dict[str, type[Recommender]] = {}


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, declared by the model (as scikit-learn's estimator tags): callers ask the configured
    model's `capabilities` (or `capabilities_of(family, config)`) and never probe its attributes or family name.
    Every flag has a reader; `tests/test_conformance.py` checks each against what the model does."""

    # `item_embeddings()` whose cosine means "similar" (similar items, cited history items); popularity's
    # one count per item makes every cosine equal
    similar_items: bool = True
    # reads items through their text: `item_text`, `encode_texts`, `text_vectors`, and `add_items` scores
    # items nobody interacted with (the Recommend page's text search, the hybrid's unseen items)
    text: bool = False
    order_aware: bool = False  # the order of a history changes its scores (refused on data without timestamps)
    training_curves: bool = False  # `training_history` holds per-epoch loss / validation metrics (live curves)
    # a `members` setting: that many copies trained from their own seeds, scored as their mean (`models/ensemble.py`)
    seed_ensemble: bool = False
    # scores add the transition prior (`transitions=auto`, `models/transitions.py`), whose kept table counts the
    # validation items: the tuner's trials, scored on them, go without it
    transition_prior: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a configured model cannot train on a dataset (`reason`) and what to do instead (`fix`)."""

    reason: str
    fix: str
    kind: type[RecsysError] = ConfigError  # the error `fit` raises for it

    def error(self) -> RecsysError:
        return self.kind(self.reason, hint=self.fix)


class Recommender(ABC):
    """Scores every catalogue item for any list of item-index histories."""

    family: ClassVar[str]
    description: ClassVar[str]  # one line for pickers: "Name: what it is"
    config_class: ClassVar[type]
    order_free_hint: ClassVar[str] = ""  # the settings that make an order-aware family ignore the order, if any

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.n_items_: int = 0
        self.item_ids_: list[str] = []
        self.version_: str = uuid.uuid4().hex  # new on every fit; a digest of the files for a loaded model
        self._digest: tuple[tuple, str] | None = None  # (what it was computed for, catalogue digest)

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

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Float32 scores [len(histories), len(items)] of the given item indices: `score(histories)[:, items]`."""
        return self.score(histories)[:, torch.from_numpy(self._check_items(items))]

    def _check_items(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """`items` as int64 indices (DataError naming the first one outside the catalogue)."""
        index = np.asarray(items, dtype=np.int64).reshape(-1)
        bad = index[(index < 0) | (index >= self.n_items_)]
        if len(bad):
            raise DataError(f"item index {int(bad[0])} is outside the catalogue of {self.n_items_} items",
                            hint="score items of this model's own catalogue (Dataset.item_index)")
        return index

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

    def refusal(self, dataset: Dataset) -> Refusal | None:
        """Why this configured model cannot train on `dataset` (its order provenance, its size), or None: forms
        ask before they offer a model, and a fit refuses the same way."""
        if self.capabilities.order_aware and not dataset.is_ordered:
            return Refusal(f"{self.family} needs the order of each user's interactions, and {dataset.name!r} has "
                           "no timestamps, so that order is unknown (a file sorted by item id would teach it "
                           "'next id = last id + 1')",
                           "add a timestamp column, or say the file is in time order on the Data page"
                           + (f"; or {self.order_free_hint}" if self.order_free_hint else ""))
        return None

    def components(self) -> list[tuple[str, Any]]:
        """(family, config) of the models that train one after another to make this one (a blend's parts), which a
        time estimate sums; [] for a model that trains as itself."""
        return []

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
        """Append items (`item_id` + metadata) to the catalogue; their new indices (models with `capabilities.text`)."""
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
        """Identity of the catalogue the model scores (its item ids in index order). Pages ask on every rerun,
        so it is kept until the weights' version or the id list itself changes (fit, load, add_items)."""
        key = (self.version_, id(self.item_ids_), len(self.item_ids_))
        if self._digest is None or self._digest[0] != key:
            self._digest = (key, catalogue_digest(self.item_ids_))
        return self._digest[1]

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
        # A new file, then renamed over the old: a process that maps the old one keeps reading it whole (written in
        # place, its mapped pages would change under it, or vanish past a shorter file's end: SIGBUS).
        partial = d / "model.safetensors.partial"
        save_file(tensors, str(partial))
        partial.replace(d / "model.safetensors")
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


def capabilities_of(family: str, config: Any = None) -> Capabilities:
    """What a model of `family` with `config` can do, without loading or training anything. `config` is a
    config instance, or a dict of its settings (flat or nested, as a form or a run record holds them; a name this
    version does not know is left out); None means the defaults. Some answers depend on the config (a fine-tuned
    text tower has training curves, a zero-shot one has not), so callers that know the config pass it."""
    return _configured(family, config).capabilities


def refusal_of(family: str, config: Any, dataset: Dataset) -> Refusal | None:
    """`refusal(dataset)` of a model of `family` with `config` (as `capabilities_of` takes it), training nothing."""
    return _configured(family, config).refusal(dataset)


def _configured(family: str, config: Any) -> Recommender:
    """An untrained model of `family` with `config` (an instance, a flat or nested dict, or None: defaults)."""
    cls = family_class(family)
    if isinstance(config, dict):
        config = build_config(cls.config_class, _known_settings(cls.config_class, config))
    return cls(config)


def _known_settings(config_class: type, values: dict) -> dict:
    known = {name for name, _ in flat_fields(config_class)}
    train = values.get(TRAIN) if isinstance(values.get(TRAIN), dict) else {}
    flat = {**{k: v for k, v in values.items() if k != TRAIN}, **{f"{TRAIN}.{k}": v for k, v in train.items()}}
    return {k: v for k, v in flat.items() if k in known or f"{TRAIN}.{k}" in known}


def config_from_dict(config_class: type, values: dict, file: str = "") -> Any:
    """The config of a saved model; a setting this version does not know is an error naming it."""
    try:
        return build_config(config_class, values)
    except ConfigError as err:
        raise ModelError(f"the saved config does not fit {config_class.__name__}: {err.message}", file=file,
                         hint="this folder was saved by another version of RecSys Explorer; retrain the model") from err


def load_model(directory: str | Path) -> Recommender:
    """Load any saved model folder, validating it before use.

    A folder may be hostile (an upload, a path typed in a form): every file is size-checked, the
    safetensors header is read and checked before any tensor is, and the weights are first loaded
    into a model on the `meta` device (no memory), so a config whose sizes do not match its weights
    (e.g. `max_len` 16,000,000) fails before anything is allocated. Every failure is a ModelError.
    The tensors are then mapped from the file (`map_tensors`), not read into this process's memory.
    """
    d = Path(directory)
    for name in ("config.json", "item_ids.json", "model.safetensors"):
        if not _is_file(d / name):
            raise ModelError(f"model folder is missing {name}", file=shown_path(d),
                            hint="pick a folder saved by RecSys Explorer (config.json + model.safetensors + item_ids.json)")
    meta = _json_file(d / "config.json", dict)
    item_ids = _json_file(d / "item_ids.json", list)
    config_file = shown_path(d / "config.json")
    family = meta.get("family")
    if isinstance(family, str) and family not in FAMILIES:
        import recsys_core.models  # noqa: F401  registers every family

    if not isinstance(family, str) or family not in FAMILIES:
        raise ModelError(f"unknown model family {_short(family)}", file=config_file,
                        hint=f"known families: {sorted(FAMILIES)}")
    _check_sections(meta, config_file)
    cls = FAMILIES[family]
    config = config_from_dict(cls.config_class, migrate(family, cls.config_class, meta, config_file), config_file)
    _check_sizes(config, meta, item_ids, config_file)
    header = _tensor_header(d / "model.safetensors")
    model = cls(config)
    model.n_items_ = int(meta["n_items"])
    model.item_ids_ = [str(i) for i in item_ids]
    if meta.get("catalogue", model.catalogue_digest()) != model.catalogue_digest():
        raise ModelError("item_ids.json is not the catalogue this model was saved with", file=shown_path(d),
                         hint="the folder was edited or mixed with another model's files; re-export the model")
    try:
        model.read_extra_files(d)
        _dry_run(cls, config, model, header)
        model.load_state_tensors(map_tensors(d / "model.safetensors"))
    except RecsysError:
        raise
    except Exception as err:  # a damaged file raises library errors: the user gets ours, not a traceback
        raise ModelError(f"the model files could not be read ({type(err).__name__}: {_reason(err)})", file=shown_path(d),
                         hint="the folder is damaged or was not saved by RecSys Explorer; retrain the model") from err
    model.version_ = _files_digest(d)
    return model


# Sizes a saved config may claim; far above any model this app trains, far below a memory blow-up.
MAX_ITEMS = 50_000_000
SIZE_LIMITS = {"max_len": 65_536, "hidden": 16_384, "layers": 128, "heads": 1_024, "n_negatives": 1_000_000}
MAX_JSON_BYTES = 1 << 30


def shown_path(path: str | Path) -> str:
    """A model file or folder as an error names it: its folder and its own name (`run-00001-ease/config.json`),
    never the server's absolute path (errors reach visitors, who typed a path relative to the workspace)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _reason(err: Exception) -> str:
    """A library error's words without the file path an OSError carries."""
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)[:200]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; a path the system refuses (a name over 255 bytes, no permission) is a ModelError."""
    try:
        return path.is_file()
    except OSError as err:
        raise ModelError(f"the model folder cannot be read ({err.strerror or type(err).__name__})",
                         file=shown_path(path.parent)[-120:],
                         hint="give the folder of a model saved by RecSys Explorer, e.g. models/run-00001-ease") from err


def _check_sections(meta: dict, file: str) -> None:
    """config.json's `config` (and its training-loop section) must be objects of settings before anything reads them."""
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise ModelError(f"config.json's \"config\" is a {type(config).__name__} ({_short(config, 40)}), expected an "
                         "object of settings", file=file, hint="re-export the model; the file was edited or damaged")
    train = config.get(TRAIN)
    if train is not None and not isinstance(train, dict):
        raise ModelError(f"config.json's \"config.{TRAIN}\" is a {type(train).__name__} ({_short(train, 40)}), "
                         "expected an object of training settings", file=file,
                         hint="re-export the model; the file was edited or damaged")


def _json_file(path: Path, kind: type) -> Any:
    """A small JSON file of the expected top-level type, or a ModelError naming it."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModelError(f"{path.name} is larger than {MAX_JSON_BYTES >> 20} MB", file=shown_path(path),
                             hint="this is not a folder saved by RecSys Explorer")
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelError(f"{path.name} cannot be read ({err.strerror or type(err).__name__})", file=shown_path(path),
                         hint="give the folder of a model saved by RecSys Explorer") from err
    except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, a number of over 4,300 digits, nesting
        raise ModelError(f"{path.name} is not valid JSON ({str(err)[:120]})", file=shown_path(path),
                         hint="re-export the model; the file is damaged") from err
    if not isinstance(value, kind):
        raise ModelError(f"{path.name} holds a {type(value).__name__}, expected a {kind.__name__}",
                         file=shown_path(path), hint="re-export the model; the file is damaged")
    return value


def _check_sizes(config: Any, meta: dict, item_ids: list, file: str) -> None:
    """Catalogue and size settings within limits, before anything is built from them."""
    n_items = meta.get("n_items")
    if not isinstance(n_items, int) or isinstance(n_items, bool) or not 0 < n_items <= MAX_ITEMS:
        raise ModelError(f"config.json has no valid n_items (got {n_items!r})", file=file,
                         hint="re-export the model; n_items must be the number of items it scores")
    if len(item_ids) != n_items:
        raise ModelError(f"item_ids.json lists {len(item_ids):,} items but config.json says n_items={n_items:,}",
                         file=file, hint="the folder was edited or mixed with another model's files")
    flat = flatten_config(config) if is_dataclass(config) else {}
    for name, limit in SIZE_LIMITS.items():
        value = flat.get(name)
        if isinstance(value, int | float) and not 0 <= value <= limit:
            raise ModelError(f"config.json sets {name}={value:,}, outside 0..{limit:,}", file=file,
                             hint="this folder was not saved by RecSys Explorer, or was edited; retrain the model")


# safetensors' dtype codes -> the names torch gives those dtypes; a code this torch lacks is left out. F4/F6 are
# not here: torch packs them (two per byte), so their shapes are not the header's.
_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
                "F8_E8M0": "float8_e8m0fnu", "C64": "complex64", "I64": "int64", "I32": "int32", "I16": "int16",
                "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
_DTYPES = {code: getattr(torch, name) for code, name in _TORCH_NAMES.items() if hasattr(torch, name)}


def _tensor_header(path: Path) -> dict[str, tuple[torch.dtype, list[int]]]:
    """{name: (dtype, shape)} of a safetensors file, reading no tensor. The library checks all a hostile header
    could lie about: its length (at most 100 MB), offsets outside the file, overlapping or leaving gaps, and
    sizes unlike dtype x shape."""
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (a safe_open is no mapping)
            found = {name: (part.get_dtype(), part.get_shape()) for name, part in slices.items()}
    except (OSError, SafetensorError) as err:
        raise ModelError(f"model.safetensors is not a safetensors file ({_reason(err)})", file=shown_path(path),
                         hint="the file is damaged or is another format (never a pickle); re-export the model") from err
    unknown = sorted({code for code, _ in found.values() if code not in _DTYPES})
    if unknown:
        raise ModelError(f"model.safetensors holds {', '.join(unknown)} weights, which this torch {torch.__version__} "
                         "cannot load as they are", file=shown_path(path), hint="re-export the model in float32")
    return {name: (_DTYPES[code], shape) for name, (code, shape) in found.items()}


def map_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, mapped from it rather than read (`np.memmap`, mode "c": copy-on-write).
    Pages come from the page cache as they are touched, so processes that load the same model (the API's
    workers) share one copy; a process that writes a tensor (fine-tuning) gets private pages and the file never
    changes. A file system that refuses mmap is read into memory instead. The header is checked again here
    (what `_tensor_header` lets the library check): every tensor's dtype, shape and offsets inside the file,
    its size equal to dtype x shape, and no two tensors overlapping."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or not 0 < length <= min(_MAX_HEADER, size - 8):
                raise _not_safetensors(path, f"a header of {length:,} bytes in a file of {size:,}")
            header = json.loads(f.read(length))
    except OSError as err:
        raise _not_safetensors(path, _reason(err)) from err
    except (ValueError, RecursionError) as err:
        raise _not_safetensors(path, f"its header is not JSON: {str(err)[:80]}") from err
    start, data_size = 8 + length, size - 8 - length
    entries = _entries(header, data_size, path)
    data = _data_bytes(path, start, data_size)
    return {name: _from_bytes(data[begin:end], dtype, shape) for name, (dtype, shape, begin, end) in entries.items()}


_MAX_HEADER = 100_000_000  # the library's own limit


def _not_safetensors(path: Path, why: str) -> ModelError:
    return ModelError(f"model.safetensors is not a safetensors file ({why})", file=shown_path(path),
                      hint="the file is damaged or is another format (never a pickle); re-export the model")


def _entries(header: Any, data_size: int, path: Path) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """{name: (dtype, shape, begin, end)} of a parsed header, each checked; offsets count from the data's start."""
    if not isinstance(header, dict):
        raise _not_safetensors(path, f"its header is a {type(header).__name__}, not an object")
    entries, previous = {}, (0, "")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
            raise _not_safetensors(path, f"tensor {_short(name, 40)} has no dtype this torch loads")
        dtype, shape, offsets = _DTYPES[entry["dtype"]], entry.get("shape"), entry.get("data_offsets")
        if not _whole_numbers(shape) or not _whole_numbers(offsets) or len(offsets) != 2:
            raise _not_safetensors(path, f"tensor {_short(name, 40)} has no valid shape and offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
            raise _not_safetensors(path, f"tensor {_short(name, 40)}'s offsets {begin:,}..{end:,} do not hold "
                                         f"{entry['dtype']} {shape} inside {data_size:,} bytes of data")
        entries[name] = (dtype, shape, begin, end)
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin < previous[0]:
            raise _not_safetensors(path, f"tensors {_short(previous[1], 40)} and {_short(name, 40)} overlap")
        if end > begin:
            previous = (end, name)
    return entries


def _whole_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _data_bytes(path: Path, start: int, size: int) -> torch.Tensor:
    """The file's tensor bytes from `start`, mapped copy-on-write; read when the file system cannot map them."""
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=(size,))
    except (OSError, ValueError):  # no mmap on this file system (or nothing to map): read it, as before
        try:
            raw = np.fromfile(path, dtype=np.uint8, count=size, offset=start)
        except OSError as err:
            raise _not_safetensors(path, _reason(err)) from err
        if len(raw) != size:
            raise _not_safetensors(path, f"it ends {size - len(raw):,} bytes early")
    return torch.from_numpy(raw)


def _from_bytes(raw: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """A tensor over `raw`'s bytes (no copy), or over a copy of them when a hand-made file misaligns it."""
    if raw.data_ptr() % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype).reshape(shape)


def _dry_run(cls: type[Recommender], config: Any, model: Recommender, header: dict) -> None:
    """Load weights of the header's shapes into a copy of the model on the meta device (allocates nothing):
    a config whose sizes do not match its weights fails here. Families that need real values to load
    (closed-form models read their arrays) cannot dry-run; their own load checks the shapes."""
    with torch.device("meta"):
        probe = cls(config)
        probe.n_items_, probe.item_ids_ = model.n_items_, model.item_ids_
        tensors = {name: torch.empty(shape, dtype=dtype) for name, (dtype, shape) in header.items()}
        try:
            probe.load_state_tensors(tensors)
        except RecsysError:
            raise
        except (NotImplementedError, RuntimeError, TypeError, ValueError, AttributeError):
            return


def _files_digest(directory: Path) -> str:
    """Digest of a model folder's three files: two loads of one folder share cached results."""
    digest = hashlib.sha256()
    for name in ("config.json", "item_ids.json", "model.safetensors"):
        with open(directory / name, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]
