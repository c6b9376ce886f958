"""Blend: sequential models of different families or settings (BERT4Rec, SASRec+, the hybrid; each with its own settings and
seed members) trained one after another on the same split, scored as the mean of all their members' logits plus
one transition prior weighed on validation over the blend.

Why: on the demo, where RecTools' SASRecModel is ahead of every single model of ours, BERT4Rec (`ligr`) x3 + the
demo's tuned SASRec+ x3 + the prior tests 0.1483 +/- 0.0007 (3 seeds) against 0.1469 for five BERT4Rec members at the
same CPU, and validation agrees (README, "Blends"): the two families miss different things. The mean of the members' logits ranks exactly as
the mean of their log-probabilities (each member's log-sum-exp is a constant per user), so families whose logits
differ in scale blend as probabilities would; a part of m members counts m times.

`parts` spells them as the peers benchmark does: "bert4rec@block=ligr;members=3 + sasrec@members=3". The blend's loop
settings (`train.*`, `valid_share`) are every part's, unless a part names its own; the run-level ones (seed, budget,
device, checkpoints) are the blend's alone, the budget shared in proportion to the parts' members. A part cannot
weigh its own prior (the blend weighs one over all parts) or refit (its refit would train on the validation items
that prior is weighed on).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import ConfigError, ModelError
from recsys_core.evaluation.metrics import sample_users
from recsys_core.models import ensemble
from recsys_core.models.base import FAMILIES, Capabilities, Recommender
from recsys_core.models.sequential import SequentialConfig, SequentialRecommender, validation_metrics
from recsys_core.models.settings import TRAIN, Settings, TrainConfig, build_config, resolve_name, setting
from recsys_core.models.transitions import TRANSITION_MODES, TransitionPrior, fit_prior
from recsys_core.progress import Progress

# BERT4Rec `ligr` x3 + SASRec+ x3: the demo's best blend but for SASRec+'s tuned settings (README, "Blends")
DEFAULT_PARTS = "bert4rec@block=ligr;members=3 + sasrec@members=3"
PREFIX = "part"  # saved tensors of part i: "part{i}.<the part's own tensor name>"
# Settings of the run as a whole: the blend's, handed to every part (a part naming one is refused)
RUN_LEVEL = ("train.seed", "train.cpu_budget_s", "train.device", "train.amp", "train.checkpoint_dir", "train.resume")
# A part's folder or encoder name would escape the checks that keep a run's paths inside its workspace (they read
# the blend's own settings), so a hybrid part reads the bundled encoder
OWN_TEXT = ("text_tower_dir", "text_model_name")
REFUSED = {"transitions": "the blend weighs one transition prior over all its parts: set transitions on the blend",
           "refit": "a part's refit would train on the validation items the blend's prior is weighed on",
           **{name: f"{name} is the blend's, shared by its parts: set it on the blend" for name in RUN_LEVEL},
           **{name: "a hybrid part reads the bundled text encoder; train a hybrid alone to choose another"
              for name in OWN_TEXT}}
_SPLIT = re.compile(r"\s*\+\s*(?=[A-Za-z_])")  # "+" before a family name (not the one of "1e+3")


@dataclass
class BlendConfig(Settings):
    parts: str = setting(DEFAULT_PARTS, "Sequential models blended, '+' between them: family@name=value;... "
                                        "Their members' scores are averaged; CPU: about the sum of the parts'.")
    transitions: str = setting("auto", "auto: also score how often each item followed the history's last item, "
                                       "weighted on validation over the blend; off: the parts alone.",
                               choices=TRANSITION_MODES)
    valid_share: float = setting(0.08, "Every part's valid_share: most of its training compute validation may take.",
                                 ge=0, lt=1)
    train: TrainConfig = field(default_factory=lambda: SequentialConfig().train,
                               metadata={"help": "Every part's training loop, unless the part sets its own."})

    def check(self) -> None:
        part_configs(self)  # every part a sequential family with settings it has, each allowed


def parse_parts(text: str) -> list[tuple[str, dict[str, Any]]]:
    """`parts` -> [(family, {name: value})]; a value is JSON where it reads as JSON (3, 0.5, true), else text."""
    out = []
    for number, chunk in enumerate(_SPLIT.split(text.strip()), 1):
        family, _, rest = chunk.strip().partition("@")
        family, values = family.strip(), {}
        for pair in filter(None, (p.strip() for p in rest.split(";"))):
            name, equals, value = pair.partition("=")
            if not equals or not name.strip():
                raise ConfigError(f"part {number} ({family}): {pair!r} is not name=value", setting="parts",
                                  hint=f"write each part as family@name=value;name=value, e.g. {DEFAULT_PARTS}")
            values[name.strip()] = _value(value.strip())
        out.append((family, values))
    return out


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def part_families() -> list[str]:
    """The families a blend can hold: the sequential ones."""
    return sorted(name for name, cls in FAMILIES.items() if issubclass(cls, SequentialRecommender))


def part_configs(config: BlendConfig) -> list[tuple[type[SequentialRecommender], SequentialConfig]]:
    """(class, config) of each part: the blend's loop settings under the part's own, its prior off, and its share
    of the run: seed `seed x parts + i` (two seeds' blends share no part), a budget in proportion to its members
    and a checkpoint folder of its own. ConfigError (setting "parts") naming the part and what to change."""
    import recsys_core.models  # noqa: F401  registers every family

    specs = parse_parts(config.parts)
    shared = {f"{TRAIN}.{k}": v for k, v in dataclasses.asdict(config.train).items()} | {"valid_share": config.valid_share}
    built = [_part(number, family, values, shared) for number, (family, values) in enumerate(specs, 1)]
    total = sum(cfg.members for _, cfg in built)
    out = []
    for i, (cls, cfg) in enumerate(built):
        folder = config.train.checkpoint_dir and f"{config.train.checkpoint_dir}/{PREFIX}{i}"
        train = dataclasses.replace(cfg.train, seed=config.train.seed * len(built) + i, checkpoint_dir=folder,
                                    cpu_budget_s=config.train.cpu_budget_s * cfg.members / total)
        out.append((cls, dataclasses.replace(cfg, train=train)))
    return out


def _part(number: int, family: str, values: dict[str, Any], shared: dict[str, Any]) -> tuple[type, Any]:
    allowed = part_families()
    if family not in allowed:
        raise ConfigError(f"part {number}: {family!r} cannot be part of a blend", setting="parts",
                          hint=f"a blend holds sequential models: {', '.join(allowed)}")
    cls = FAMILIES[family]
    try:
        names = {resolve_name(cls.config_class, name): value for name, value in values.items()}
        for name in names:
            if name in REFUSED:
                raise ConfigError(f"{name} cannot be set in a part", setting=name, hint=REFUSED[name])
        return cls, build_config(cls.config_class, {**shared, **names, "transitions": "off"})
    except ConfigError as err:
        raise ConfigError(f"part {number} ({family}): {err.message}", setting="parts", hint=err.hint) from err


class Blend(Recommender):
    """The parts' members' mean logits, plus the blend's transition prior (`transitions`)."""

    family = "blend"
    description = "Blend: sequential models (BERT4Rec, SASRec+) trained one after another, their scores averaged"
    config_class = BlendConfig

    def __init__(self, config: BlendConfig | None = None) -> None:
        super().__init__(config)
        self.parts_: list[SequentialRecommender] = []
        self.fit_report_: dict = {}
        self.transitions_: TransitionPrior | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(order_aware=True, training_curves=True, transition_prior=self.config.transitions == "auto")

    def training_history(self) -> list[dict]:
        """The first part's curves (its first member's), as a seed ensemble shows its first member's."""
        return self.parts_[0].training_history() if self.parts_ else []

    def fit_report(self) -> dict:
        return self.fit_report_

    def training_device(self) -> str:
        return self.parts_[0].training_device() if self.parts_ else "cpu"

    def components(self) -> list[tuple[str, SequentialConfig]]:
        return [(cls.family, cfg) for cls, cfg in part_configs(self.config)]

    def training_memory(self, n_items: int) -> int:
        return max(cls(cfg).training_memory(n_items) for cls, cfg in part_configs(self.config))

    def fit(self, dataset: Dataset, progress: Progress | None = None, split: Split | None = None) -> Blend:
        progress = progress or Progress()
        self._remember_catalogue(dataset)
        configs, self.parts_, self.transitions_ = part_configs(self.config), [], None
        for i, (cls, cfg) in enumerate(configs):
            progress.update(0, 0, message=f"blend part {i + 1} of {len(configs)}: {cls.family}, {cfg.members} member(s)")
            part = cls(cfg).fit(dataset, progress, split)
            if progress.cancelled and self.parts_:  # a part cut short would only dilute the finished ones
                break
            self.parts_.append(part)
            if progress.cancelled:
                break
        valid = self._valid(split)
        self.fit_report_ = self._report(len(configs), valid if not progress.cancelled else None)
        if self.config.transitions == "auto" and not progress.cancelled:
            known = split.train_with_validation() if split is not None else None
            train = split.train if split is not None else dataset.sequences()
            self.transitions_, self.fit_report_["transitions"] = fit_prior(self._parts_scores, self.n_items_, train,
                                                                           known, valid)
        return self

    def _valid(self, split: Split | None) -> EvalSet | None:
        """The validation users the prior is weighed on: up to the loop's `max_valid_users`, seeded by the run."""
        if split is None or len(split.valid) == 0:
            return None
        return sample_users(split.valid, self.config.train.max_valid_users, self.config.train.seed)

    def _report(self, requested: int, valid: EvalSet | None) -> dict:
        """The first part's stop and steps (what the run card reads, as for a seed ensemble's first member), each
        part's, every member across the parts, and the blend's own validation without the prior."""
        reports = [p.fit_report() for p in self.parts_]
        each = [{"part": i, **m} for i, part in enumerate(self.parts_) for m in _members(part)]
        keep = ("stopped", "steps", "best_epoch", "best_metric", "epochs_run", "cpu_seconds", "batch_size")
        out = {**{k: reports[0].get(k) for k in keep}, "loss_reason": "; ".join(r.get("loss_reason", "") for r in reports),
               "parts": [{"family": p.family, "members": len(p.members_), **{k: r.get(k) for k in keep}}
                         for p, r in zip(self.parts_, reports)],
               "parts_requested": requested,
               "members": {"requested": sum(cfg.members for _, cfg in part_configs(self.config)),
                           "trained": len(each), "each": each},
               "improved": ensemble.improved(reports)}  # None, not False, where no part validated twice
        if valid is not None:
            out["members"]["valid"] = validation_metrics(self._without_prior(), valid)
        return out

    def _without_prior(self) -> Recommender:
        """This blend scoring with its parts alone (for the validation reported beside the prior's)."""
        twin = Blend(dataclasses.replace(self.config, transitions="off"))
        twin.parts_, twin.n_items_, twin.item_ids_ = self.parts_, self.n_items_, self.item_ids_
        return twin

    # -- inference

    def _require_fitted(self) -> None:
        if not self.parts_:
            raise ModelError("the blend is not trained yet", hint="call fit() or load a saved model")

    def _weights(self) -> list[float]:
        """Each part's share of the mean: its members over all members."""
        total = sum(len(p.members_) for p in self.parts_)
        return [len(p.members_) / total for p in self.parts_]

    def _parts_scores(self, histories: Sequence[np.ndarray], index: np.ndarray | None = None) -> torch.Tensor:
        self._require_fitted()
        out = None
        for part, weight in zip(self.parts_, self._weights()):
            scores = part.score(histories) if index is None else part.score_items(histories, index)
            out = scores.mul_(weight) if out is None else out.add_(scores, alpha=weight)
        return out

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        out = self._parts_scores(histories)
        if self.transitions_ is not None:
            self.transitions_.add_to(out, histories)
        return out

    def score_items(self, histories: Sequence[np.ndarray], items: Sequence[int] | np.ndarray) -> torch.Tensor:
        index = self._check_items(items)
        out = self._parts_scores(histories, index)
        if self.transitions_ is not None:
            self.transitions_.add_to(out, histories, torch.from_numpy(index))
        return out

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The parts' user vectors side by side (scores also add the prior, which no vector holds)."""
        self._require_fitted()
        return np.concatenate([p.user_embeddings(histories) for p in self.parts_], axis=1)

    def item_embeddings(self) -> np.ndarray:
        """The parts' item vectors side by side, each scaled by its share, so a user vector . item vector is the
        parts' mean logit (less any output bias)."""
        self._require_fitted()
        return np.concatenate([p.item_embeddings() * w for p, w in zip(self.parts_, self._weights())], axis=1)

    # -- persistence

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        prior = self.transitions_.tensors() if self.transitions_ is not None else {}
        return {**{f"{PREFIX}{i}.{name}": value for i, part in enumerate(self.parts_)
                   for name, value in part.state_tensors().items()}, **prior}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        self.transitions_ = TransitionPrior.pop_from(tensors, self.config.transitions)
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            head, _, rest = name.partition(".")
            number = head[len(PREFIX):] if head.startswith(PREFIX) else ""
            if not number.isdigit():
                raise ModelError(f"saved weights hold {name!r}, which is no part's", hint=_MIXED)
            groups.setdefault(int(number), {})[rest] = value
        configs = part_configs(self.config)
        if sorted(groups) != list(range(len(groups))) or not 0 < len(groups) <= len(configs):
            raise ModelError(f"saved weights hold parts {sorted(groups)}, but config.json names {len(configs)}",
                             hint=_MIXED)
        self.parts_ = [self._load_part(cls, cfg, groups[i]) for i, (cls, cfg) in enumerate(configs[:len(groups)])]

    def _load_part(self, cls: type[SequentialRecommender], cfg: SequentialConfig,
                   tensors: dict[str, torch.Tensor]) -> SequentialRecommender:
        part = cls(cfg)
        part.n_items_, part.item_ids_ = self.n_items_, self.item_ids_
        part.load_state_tensors(tensors)
        return part


_MIXED = "the folder's model.safetensors was edited or mixed with another model's; re-export it"


def _members(part: SequentialRecommender) -> list[dict]:
    """A part's members as its fit report lists them (one member: the report's own stop, under the part's seed)."""
    report = part.fit_report()
    if "members" in report:
        return report["members"]["each"]
    return [{"seed": part.config.train.seed, **{k: report.get(k) for k in ensemble.REPORTED}}]
