"""Model settings: typed config dataclasses whose every field carries a one-line help text and its rules.

A trainable model's config embeds one `TrainConfig` as `train` (how the shared loop in `loop.py` trains
it), so the loop's settings are spelled once. Forms, the CLI's `--set` and saved `config.json` files
see a config as flat names: `hidden`, `train.lr`; a bare loop name (`lr`, `epochs`) means `train.<name>`.

Every config derives from `Settings`: building one (the defaults, `dataclasses.replace`, a form, `--set`, a
saved `config.json`) checks each setting's type and its declared bounds or choices, and the config's own
rules across settings (`check`), so a bad value is refused by name before any data is read or any job starts.
(Declared on `setting()` rather than pydantic models: the configs stay dataclasses, which `asdict`, `replace`,
the meta-device dry run and the saved-folder migrations already use; the rules take ~60 lines here.)
`FORMAT_VERSION` and `migrate` keep model folders saved by older versions loadable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from recsys_core.errors import ConfigError, ModelError

TRAIN = "train"
# Version of the saved model folder layout (config.json). 0: no version, training settings flat in the
# model config (before TrainConfig); 1: `train` nested, `format_version` and `catalogue` recorded;
# 2: the text tower's `steps_per_validation` is gone: `train.eval_every` / `train.eval_steps`, as in every loop;
# 3: EASE saves B as its column blocks (`B.0`, `B.1`, ...) so a load maps them; `B` whole still loads.
FORMAT_VERSION = 3

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: tuple[str, ...] | None = None,
            pattern: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its one-line help (shown by the Train form and `--set` errors) and the values it
    allows: bounds (`ge`, `gt`, `le`, `lt`), `choices`, or a regular expression `pattern` for text."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    rules = {"bounds": bounds, "choices": tuple(choices) if choices else None, "pattern": pattern}
    return field(default=default, metadata={"help": help, "rules": rules}, **kw)


def allowed(f: dataclasses.Field) -> str:
    """What a setting allows, in words ("> 0 and < 1", "one of 'svd', 'random'"); '' when anything of its type."""
    rules = f.metadata.get("rules", {}) if f.metadata else {}
    if rules.get("choices"):
        return "one of " + ", ".join(repr(c) for c in rules["choices"])
    if rules.get("pattern"):
        return f"text matching {rules['pattern']}"
    return " and ".join(f"{_BOUNDS[k][1]} {v:g}" for k, v in rules.get("bounds", {}).items())


class Settings:
    """Base of every config dataclass: each setting is checked when the config is built."""

    prefix: ClassVar[str] = ""  # how the flat names spell this config's settings ("train." for the loop's)
    # What the tuner searches ({flat name: Dimension}, see `search_space`); empty: nothing to tune
    search_space: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            name = self.prefix + f.name
            object.__setattr__(self, f.name, _checked(f, hints[f.name], getattr(self, f.name), name))
        self.check()

    def check(self) -> None:
        """Rules across settings (e.g. hidden a multiple of heads): a ConfigError naming the setting to change."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked(f: dataclasses.Field, kind: Any, value: Any, name: str) -> Any:
    """`value` as the setting's type (an integral float for an int, an int for a float), or a ConfigError."""
    value = _typed(kind, value, name)
    if _breaks(f.metadata.get("rules", {}) if f.metadata else {}, value):
        raise ConfigError(f"{value!r} is not allowed (it must be {allowed(f)})", setting=name,
                          hint=f"set {name} to a value {allowed(f)}; {name}: {help_of(f) or 'see the Train form'}")
    return value


def _breaks(rules: dict, value: Any) -> bool:
    if rules.get("choices"):
        return value not in rules["choices"]
    if rules.get("pattern"):
        return not re.fullmatch(rules["pattern"], value)
    return not all(_BOUNDS[rule][0](value, limit) for rule, limit in rules.get("bounds", {}).items())


def _typed(kind: Any, value: Any, name: str) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is float and number:
        return float(value)
    if kind is int and number and float(value).is_integer():
        return int(value)
    if kind in (str, bool) and isinstance(value, kind):
        return value
    if isinstance(kind, type) and issubclass(kind, Settings) and isinstance(value, kind):
        return value
    what = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{value!r} is a {type(value).__name__}, expected {_KIND_WORDS.get(what, what)}",
                      setting=name, hint=f"give {name} {_KIND_WORDS.get(what, what)}")


_KIND_WORDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text"}


@dataclass
class TrainConfig(Settings):
    """How the shared training loop trains a neural model; defaults suit MovieLens-sized data on a CPU."""

    prefix: ClassVar[str] = f"{TRAIN}."

    epochs: int = setting(100, "Passes over the training data; early stopping usually ends sooner.", ge=1)
    max_steps: int = setting(0, "Stop after this many optimizer steps (0 = no cap).", ge=0)
    batch_size: int = setting(128, "Training examples per optimizer step (halved automatically if memory runs out).",
                              ge=1)
    lr: float = setting(1e-3, "Peak learning rate of AdamW, reached after the warm-up.", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to biases and norms).", ge=0)
    adam_beta2: float = setting(0.999, "AdamW's second-moment decay (BERT4Rec's paper used 0.98: it adapts faster).",
                                ge=0, lt=1)
    warmup_frac: float = setting(0.05, "Share of the steps spent warming the learning rate up from zero.", ge=0, le=1)
    lr_floor: float = setting(0.05, "Learning rate at the end of the linear decay, as a share of the peak "
                                    "(1 = constant after the warm-up, as RecTools trains).", ge=0, le=1)
    grad_clip: float = setting(5.0, "Clip the gradient norm to this (0 = no clipping).", ge=0)
    patience: int = setting(5, "Validations without improvement before stopping early (0 = never stop early).", ge=0)
    eval_every: int = setting(1, "Epochs between validations (0 = about every eval_steps optimizer steps).", ge=0)
    eval_steps: int = setting(50, "With eval_every=0: optimizer steps between validations (rounded to whole epochs "
                                  "where a model validates only between epochs).", ge=1)
    max_valid_users: int = setting(5000, "Validate on at most this many users (a random, seeded sample; 0 = all).",
                                   ge=0)
    seed: int = setting(0, "Seed of this run's random generators (same seed, same data: same model).", ge=0)
    device: str = setting("auto", "Where to train: auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps.",
                          pattern=r"auto|cpu|mps|cuda(:\d+)?")
    amp: bool = setting(True, "Mixed precision (bf16/fp16) on CUDA GPUs.")
    cpu_budget_s: float = setting(0.0, "Stop after the epoch that passes this many CPU seconds of training "
                                       "(all threads; 0 = no limit): a busy machine gets the same model.", ge=0)
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



# ---- search spaces (the tuner's, declared on each family's config next to its settings) -----------------------


@dataclass(frozen=True)
class Dimension:
    """One setting's range for the tuner: numbers between `low` and `high` (on a log scale when `log`, in steps
    of `step`), or one of `choices`. A config declares its own as `search_space = {flat name: Dimension}`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def values(self) -> tuple:
        """The values a check tries: the ends of a range, or every choice."""
        return self.choices if self.choices is not None else (self.low, self.high)


def search(low: float, high: float, *, log: bool = False, step: float | None = None) -> Dimension:
    """A range the tuner searches (an int setting draws whole numbers)."""
    return Dimension(low=low, high=high, log=log, step=step)


def search_choices(*values: Any) -> Dimension:
    """Values the tuner picks from."""
    return Dimension(choices=tuple(values))


def search_space(config_class: type) -> dict[str, Dimension]:
    """{flat name: Dimension} the config declares (empty: the family has nothing to tune), each checked:
    a real setting, and every value the space can give (a range's ends, each choice) allowed by its rules."""
    space = dict(config_class.search_space)
    fields = dict(flat_fields(config_class))
    for name, dim in space.items():
        if name not in fields:
            raise ConfigError(f"{config_class.__name__}.search_space names {name!r}, which is not a setting",
                              setting=name, hint=f"settings: {', '.join(sorted(fields))}")
        if dim.choices is None and not (dim.low is not None and dim.high is not None and dim.low < dim.high):
            raise ConfigError(f"the search range of {name} is empty ({dim.low}..{dim.high})", setting=name,
                              hint="declare search(low, high) with low < high, or search_choices(...)")
        for value in dim.values():
            own = not name.startswith(f"{TRAIN}.")
            kind = _type_hints(config_class if own else TrainConfig)[name.split(".", 1)[-1]]
            _checked(fields[name], kind, value, name)
    return space


# ---- saved configs of older versions ---------------------------------------------------------------

_LOOP_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
# v0 spellings of loop settings, per model family: old name -> TrainConfig name.
_V0_RENAMES = {"text_tower": {"warmup_fraction": "warmup_frac", "valid_users": "max_valid_users",
                              "eval_every": "steps_per_validation"}}


def migrate(family: str, config_class: type, meta: dict, file: str) -> dict:
    """The `config` dict of a saved `config.json`, brought to the current format version."""
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ModelError(f"config.json has format_version {version!r}, expected a whole number", file=file,
                         hint="the folder was not saved by RecSys Explorer, or was edited; retrain the model")
    if version > FORMAT_VERSION:
        raise ModelError(f"this model was saved by a newer version of RecSys Explorer (format {version}; this "
                         f"version reads up to {FORMAT_VERSION})", file=file, hint="upgrade RecSys Explorer")
    config = dict(meta.get("config", {}))
    if version == 0:
        config = _from_v0(family, config_class, config)
    if version <= 1:
        config = _from_v1(family, config)
    return _before_transitions(config_class, config)


def _before_transitions(config_class: type, config: dict) -> dict:
    """A sequential model saved before the `transitions` setting existed scored with its encoder alone: "off", not
    today's default (every save since writes the setting, so a missing one means only that)."""
    if any(f.name == "transitions" for f in dataclasses.fields(config_class)):
        config.setdefault("transitions", "off")
    return config


def _from_v1(family: str, config: dict) -> dict:
    """v1 text towers validated every `steps_per_validation` fine-tuning steps (0 = only at the end) and ignored
    `train.eval_every`; v2 reads `train.eval_every` / `train.eval_steps` as every loop does."""
    if family != "text_tower" or "steps_per_validation" not in config or not isinstance(config.get(TRAIN), dict):
        return config
    steps = config.pop("steps_per_validation")
    train = config[TRAIN]
    at_end = {"eval_every": max(1, int(train.get("epochs", 1)))}  # rounds of every epoch: one validation, at the end
    config[TRAIN] = {**train, **({"eval_every": 0, "eval_steps": steps} if steps else at_end)}
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
