"""Model settings: typed config dataclasses whose every field carries a one-line help text.

A trainable model's config embeds one `TrainConfig` as `train` (how the shared loop in `loop.py` trains
it), so the loop's settings are spelled once. Forms, the CLI's `--set` and saved `config.json` files
see a config as flat names: `hidden`, `train.lr`; a bare loop name (`lr`, `epochs`) means `train.<name>`.
`FORMAT_VERSION` and `migrate` keep model folders saved by older versions loadable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from recsys_core.errors import ConfigError, ModelError

TRAIN = "train"
# Version of the saved model folder layout (config.json). 0: no version, training settings flat in the
# model config (before TrainConfig); 1: `train` nested, `format_version` and `catalogue` recorded.
FORMAT_VERSION = 1


def setting(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with its one-line help (shown by the Train form and `--set` errors)."""
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """How the shared training loop trains a neural model; defaults suit MovieLens-sized data on a CPU."""

    epochs: int = setting(100, "Passes over the training data; early stopping usually ends sooner.")
    max_steps: int = setting(0, "Stop after this many optimizer steps (0 = no cap).")
    batch_size: int = setting(128, "Training examples per optimizer step (halved automatically if memory runs out).")
    lr: float = setting(1e-3, "Peak learning rate of AdamW, reached after the warm-up.")
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to biases and norms).")
    adam_beta2: float = setting(0.999, "AdamW's second-moment decay (BERT4Rec's paper used 0.98: it adapts faster).")
    warmup_frac: float = setting(0.05, "Share of the steps spent warming the learning rate up from zero.")
    lr_floor: float = setting(0.05, "Learning rate at the end of the linear decay, as a share of the peak "
                                    "(1 = constant after the warm-up, as RecTools trains).")
    grad_clip: float = setting(5.0, "Clip the gradient norm to this (0 = no clipping).")
    patience: int = setting(5, "Validations without improvement before stopping early (0 = never stop early).")
    eval_every: int = setting(1, "Epochs between validations (0 = about every 50 optimizer steps).")
    max_valid_users: int = setting(5000, "Validate on at most this many users (a random, seeded sample).")
    seed: int = setting(0, "Seed of this run's random generators (same seed, same data: same model).")
    device: str = setting("auto", "Where to train: auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps.")
    amp: bool = setting(True, "Mixed precision (bf16/fp16) on CUDA GPUs.")
    cpu_budget_s: float = setting(0.0, "Stop after the epoch that passes this many CPU seconds of training "
                                       "(all threads; 0 = no limit): a busy machine gets the same model.")
    checkpoint_dir: str = setting("", "Save a checkpoint here after every epoch ('' = none).")
    resume: bool = setting(True, "Continue from the checkpoint in checkpoint_dir when there is one.")


def train_defaults(**values: Any) -> Any:
    """A `train` field whose TrainConfig starts from these model-specific defaults."""
    return field(default_factory=lambda: TrainConfig(**values),
                 metadata={"help": "How the shared training loop trains this model."})


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "") if f.metadata else ""


def flat_fields(config_class: type) -> list[tuple[str, dataclasses.Field]]:
    """(flat name, field) of every setting: model fields, then `train.*` when the config embeds one."""
    out = []
    for f in dataclasses.fields(config_class):
        if f.name == TRAIN:
            out += [(f"{TRAIN}.{g.name}", g) for g in dataclasses.fields(TrainConfig)]
        else:
            out.append((f.name, f))
    return out


def flatten_config(config: Any) -> dict[str, Any]:
    """{flat name: value} of a config instance (the inverse of `build_config`)."""
    values = dataclasses.asdict(config)
    train = values.pop(TRAIN, None)
    return {**values, **({f"{TRAIN}.{k}": v for k, v in train.items()} if train is not None else {})}


def resolve_name(config_class: type, name: str) -> str:
    """The flat name a user means: `lr` -> `train.lr` when the model has no `lr` of its own."""
    names = {flat for flat, _ in flat_fields(config_class)}
    if name in names:
        return name
    if f"{TRAIN}.{name}" in names:
        return f"{TRAIN}.{name}"
    raise ConfigError(f"{config_class.__name__} has no setting {name!r}", hint=f"settings: {', '.join(sorted(names))}")


def build_config(config_class: type, values: dict[str, Any] | None = None) -> Any:
    """A config with `values` (flat or bare loop names, or a nested `train` dict) over the defaults."""
    values = dict(values or {})
    nested = values.pop(TRAIN, None)
    if isinstance(nested, dict):
        values.update({f"{TRAIN}.{k}": v for k, v in nested.items()})
    config = config_class()
    own, train = {}, {}
    for name, value in values.items():
        flat = resolve_name(config_class, name)
        if flat.startswith(f"{TRAIN}."):
            train[flat.split(".", 1)[1]] = value
        else:
            own[flat] = value
    if train:
        own[TRAIN] = dataclasses.replace(config.train, **train)
    return dataclasses.replace(config, **own)


# ---- saved configs of older versions ---------------------------------------------------------------

_LOOP_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
# v0 spellings of loop settings, per model family: old name -> TrainConfig name.
_V0_RENAMES = {"text_tower": {"warmup_fraction": "warmup_frac", "valid_users": "max_valid_users",
                              "eval_every": "steps_per_validation"}}


def migrate(family: str, config_class: type, meta: dict, file: str) -> dict:
    """The `config` dict of a saved `config.json`, brought to the current format version."""
    version = int(meta.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ModelError(f"this model was saved by a newer version of RecSys Explorer (format {version}; this "
                         f"version reads up to {FORMAT_VERSION})", file=file, hint="upgrade RecSys Explorer")
    config = dict(meta.get("config", {}))
    if version == 0:
        config = _from_v0(family, config_class, config)
    return config


def _from_v0(family: str, config_class: type, config: dict) -> dict:
    """v0 kept the loop's settings flat in the model config, some under other names."""
    if not any(f.name == TRAIN for f in dataclasses.fields(config_class)):
        return config
    # v0 budgets were wall-clock seconds; CPU seconds are the nearest meaning that does not depend on load
    renames = {"time_budget_s": "cpu_budget_s", **_V0_RENAMES.get(family, {})}
    own, train = {}, {}
    for name, value in config.items():
        name = renames.get(name, name)
        if name in _LOOP_NAMES and name not in {f.name for f in dataclasses.fields(config_class)}:
            train[name] = value
        else:
            own[name] = value
    if isinstance(train.get("epochs"), float):
        train["epochs"] = max(1, math.ceil(train["epochs"]))  # the text tower allowed fractional passes
    return {**own, TRAIN: train}


def has_training_loop(config_class: type) -> bool:
    """Whether models of this config train in the shared loop (they embed a `TrainConfig` as `train`)."""
    return any(f.name == TRAIN for f in dataclasses.fields(config_class))
