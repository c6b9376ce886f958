"""One training run end to end: dataset -> split -> fit -> evaluate -> save -> registry row.

The Train page, the CLI and `bench/quality.py` all call `run_experiment`, so a number shown in the
browser is produced by the same code as a number in a benchmark.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_core.data.dataset import TIE_RULE, Dataset
from recsys_core.data.splits import Split, leave_one_out, temporal_split
from recsys_core.errors import ConfigError
from recsys_core.evaluation.compare import per_user_table, save_per_user
from recsys_core.evaluation.metrics import evaluate, train_popularity
from recsys_core.models import distributed, loop
from recsys_core.models.base import FAMILIES, Recommender, family_class
from recsys_core.models.settings import build_config, flat_fields, flatten_config, resolve_name
from recsys_core.progress import Progress

SPLITS = {"leave_one_out": leave_one_out, "temporal": temporal_split}
CANCELLED_EVAL_USERS = 500
# How the loop stopped, in the words a run record uses.
STOP_REASONS = {"early_stop": "converged (validation stopped improving)", "epochs": "all epochs run",
                "max_steps": "step budget", "cpu_budget": "CPU budget", "cancelled": "cancelled"}
# A run that a limit stopped while its validation was still rising learned less than it could.
LIMIT_STOPS = ("cpu_budget", "max_steps", "epochs")
PLATEAU_GAIN = 0.01  # a validation gain below 1 % of the score: about the spread between seeds, a plateau
MAX_MORE_VALIDATIONS = 50
NEEDS_METHOD = ("the last validation gains shrink geometrically at the ratio seen so far, until a gain is below 1 % "
                "of the score, then `patience` validations more, at the CPU seconds per validation so far; "
                "without a shrinking gain yet, twice the CPU so far (a lower bound)")


def families() -> list[str]:
    import recsys_core.models  # noqa: F401  registers every family

    return sorted(FAMILIES)


def config_fields(family: str) -> list[tuple[str, dataclasses.Field]]:
    """(flat name, field) of every hyperparameter of a family, each with its help, for forms and `--set`."""
    return flat_fields(family_class(family).config_class)


def make_model(family: str, overrides: dict[str, Any] | None = None) -> Recommender:
    """A fresh model with default config, `overrides` (flat names; `lr` means `train.lr`) coerced to each
    field's type."""
    cls = family_class(family)
    defaults = flatten_config(cls.config_class())
    values = {}
    for key, raw in (overrides or {}).items():
        try:
            name = resolve_name(cls.config_class, key)
        except ConfigError as err:
            raise ConfigError(f"{family} has no setting {key!r}", hint=err.hint) from err
        values[name] = _coerce(raw, defaults[name], key)
    return cls(build_config(cls.config_class, values))


def _coerce(raw: Any, default: Any, key: str) -> Any:
    if not isinstance(raw, str) or isinstance(default, str):
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1", "yes"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if default is None:
            return _parse_loose(raw)
    except ValueError as err:
        raise ConfigError(f"setting {key}={raw!r} is not a {type(default).__name__}") from err
    return raw


def _parse_loose(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["lr=0.001", "epochs=5"]` -> dict; used by the CLI's repeated `--set`."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def make_split(ds: Dataset, kind: str = "leave_one_out") -> Split:
    if kind not in SPLITS:
        raise ConfigError(f"unknown split {kind!r}", hint=f"choose one of {', '.join(SPLITS)}")
    return SPLITS[kind](ds)


@dataclass
class RunResult:
    family: str
    model: Recommender
    metrics: dict
    train_s: float
    device: str
    status: str = "finished"  # "finished", "cancelled" or "no_improvement" (validation never beat its start)
    run_id: int | None = None
    artifact_dir: str = ""
    cpu_s: float = 0.0
    extra: dict = field(default_factory=dict)  # how training ended: stop_reason, best_epoch, holdout, ...
    per_user: pd.DataFrame | None = field(default=None, repr=False)  # test metrics per user, saved with the run

    def summary(self) -> dict:
        return {
            "run_id": self.run_id, "model": self.family, "status": self.status, "train_s": round(self.train_s, 2),
            "cpu_s": round(self.cpu_s, 2), "device": self.device, "artifact_dir": self.artifact_dir,
            "metrics": self.metrics, **self.extra,
        }


def run_experiment(
    ds: Dataset,
    family: str,
    overrides: dict[str, Any] | None = None,
    *,
    split: Split | None = None,
    split_kind: str = "leave_one_out",
    progress: Progress | None = None,
    workspace: Any = None,
    dataset_name: str | None = None,
) -> RunResult:
    """Train `family` on `ds`, evaluate on the test split, and (with a workspace) save and record it.

    Under torchrun every process trains and scores its share of the test users (each gets the whole
    metrics); rank 0 alone saves and records, so a run is recorded once."""

    model = make_model(family, overrides)
    if workspace is not None:
        jail_paths(model, workspace)
    check_order(model, ds)
    split = split or make_split(ds, split_kind)
    progress = progress or Progress()
    start, cpu_start = loop.clock()
    model.fit(ds, progress=progress, split=split)
    wall, cpu = loop.clock()
    train_s, cpu_s = wall - start, cpu - cpu_start
    report = model.fit_report()
    status = "cancelled" if progress.cancelled else "no_improvement" if report.get("improved") is False else "finished"
    # A cancelled run is scored on a seeded sample of users, so Cancel frees the machine within seconds;
    # the metrics say how many users they cover.
    # Under torchrun the processes split the test users; rank 0's Cancel decides for all of them.
    cancelled = bool(distributed.from_main([float(progress.cancelled)])[0])
    metrics = evaluate(model, split.test, item_popularity=train_popularity(split), seed=0, per_user=True,
                       max_users=CANCELLED_EVAL_USERS if cancelled else None, shards=distributed.evaluation_shards())
    extra = {"stop_reason": STOP_REASONS.get(report.get("stopped"), report.get("stopped")),
             "stopped": report.get("stopped"), "best_epoch": report.get("best_epoch"),
             "epochs_run": report.get("epochs_run"), "steps": report.get("steps"), **_limits(model),
             **for_every_member(under_trained(report.get("stopped"), model.training_history(),
                                              _setting(model, "train.patience")), report),
             "holdout": split.holdout, "tie_rule": TIE_RULE,
             "loss": report.get("loss_reason"),  # which training objective, and why (loss="auto" decides)
             "refit": report.get("refit"),  # refit=true: done (steps) or why not
             "members": report.get("members"),  # members > 1: each member's seed, stop and validation
             "transitions": report.get("transitions")}  # transitions="auto": the weight and its validation
    per_user = metrics.pop("per_user", None)
    result = RunResult(family, model, metrics, train_s, model.training_device(), status, cpu_s=cpu_s,
                       extra={k: v for k, v in extra.items() if v is not None})
    if per_user is not None:  # kept for Compare, which then never re-scores this run
        result.per_user = per_user_table(per_user, split.test, train_popularity(split))
    if workspace is not None and distributed.is_main():
        _record(result, workspace, dataset_name or ds.name, split.kind)
    distributed.barrier()
    return result


def _setting(model: Recommender, name: str) -> Any:
    return flatten_config(model.config).get(name)


def _limits(model: Recommender) -> dict[str, Any]:
    """The run's budgets as set (a model without a training loop has none)."""
    flat = flatten_config(model.config)
    return {key: flat[f"train.{key}"] for key in ("cpu_budget_s", "max_steps", "epochs") if f"train.{key}" in flat}


def under_trained(stopped: str | None, history: list[dict], patience: int | None,
                  metric: str = "ndcg@10") -> dict[str, Any]:
    """{"under_trained": bool, ...} for a run that validated at least twice: True when a limit (CPU budget, step
    cap, all epochs) stopped it while validation was still rising (its best was one of its last two
    validations, above its first), with `needs_cpu_s`, the CPU seconds the curve suggests a run to early
    stopping takes (`NEEDS_METHOD`); {} for a run without validation curves."""
    checks = [(h.get("cpu_seconds", 0.0), h["metrics"][metric]) for h in history if metric in h.get("metrics", {})]
    if len(checks) < 2:
        return {}
    values = [v for _, v in checks]
    best = max(range(len(values)), key=values.__getitem__)
    rising = stopped in LIMIT_STOPS and best >= len(values) - 2 and values[best] > values[0]
    if not rising:
        return {"under_trained": False}
    return {"under_trained": True, "needs_cpu_s": round(_needs_cpu_s(checks, patience or 0), 1),
            "needs_method": NEEDS_METHOD}


def for_every_member(limits: dict[str, Any], report: dict) -> dict[str, Any]:
    """`under_trained`'s verdict on a seed ensemble, read from its first member's curve: every member needs that CPU,
    and they share the run's budget, so the run needs it once per member."""
    members = (report.get("members") or {}).get("trained", 1)
    if "needs_cpu_s" in limits:
        limits = {**limits, "needs_cpu_s": round(limits["needs_cpu_s"] * members, 1)}
    return limits


def _needs_cpu_s(checks: list[tuple[float, float]], patience: int) -> float:
    cpu, values = checks[-1][0], [v for _, v in checks]
    per_validation = (cpu - checks[0][0]) / (len(checks) - 1)
    tail = values[-3:]
    gains = [b - a for a, b in itertools.pairwise(tail)]
    if len(gains) < 2 or not 0 < gains[-1] < gains[-2]:
        return 2 * cpu
    ratio, floor = gains[-1] / gains[-2], PLATEAU_GAIN * values[-1]
    more = 0 if gains[-1] < floor else math.ceil(math.log(floor / gains[-1]) / math.log(ratio))
    return cpu + (min(more, MAX_MORE_VALIDATIONS) + patience) * per_validation


def check_order(model: Recommender, ds: Dataset) -> None:
    """Refuse an order-aware model on data whose order is unknown: it would learn the file's sort order."""
    if model.capabilities.order_aware and not ds.is_ordered:
        raise ConfigError(
            f"{model.family} reads the order of each user's history, but {ds.name!r} has no timestamps, so that "
            "order is unknown (a file sorted by item id would teach it 'next id = last id + 1')",
            hint="load the data with a timestamp column, or declare file order as time on the Data page if the "
                 "file lists each user's interactions in time order; or train EASE, item-kNN (no recency weights), "
                 "popularity or the text tower with recency_decay=1")


# Settings that name a folder the run writes or reads: with a workspace, each must lie inside it.
_FOLDER_SETTINGS = ("train.checkpoint_dir", "text_tower_dir")
# Settings that are a hub name or a folder: only a folder is jailed.
_ENCODER_SETTINGS = ("model_name", "text_model_name")


def jail_paths(model: Recommender, workspace: Any) -> None:
    """Point every folder setting (checkpoint_dir, a saved text tower, a local encoder) at its resolved folder
    inside the workspace or the operator's allow-list, or raise ConfigError: a form must not make the server
    write, resume from or load any other folder."""
    flat = flatten_config(model.config)
    for name in (*_FOLDER_SETTINGS, *_ENCODER_SETTINGS):
        value = flat.get(name)
        if not value or (name in _ENCODER_SETTINGS and not _looks_like_folder(value)):
            continue
        target = model.config.train if name.startswith("train.") else model.config
        setattr(target, name.rsplit(".", 1)[-1], str(workspace.resolve_inside(value, name)))


def _looks_like_folder(value: str) -> bool:
    return value.startswith(("/", ".", "~", "\\")) or Path(value).expanduser().exists()


def check_paths(family: str, overrides: dict[str, Any] | None, workspace: Any) -> None:
    """The jail check of `run_experiment`, up front: a page refuses the form before it starts a job."""
    jail_paths(make_model(family, overrides), workspace)


def _record(result: RunResult, workspace: Any, dataset_name: str, split_kind: str) -> None:
    config = dataclasses.asdict(result.model.config)
    # How the run ended travels with its metrics, so the leaderboard can say why a number is what it is.
    metrics = {**result.metrics, "run": {"cpu_s": round(result.cpu_s, 2), **result.extra}}
    # The workspace writes the files first and records the run with them in one step (crash-safe).
    run = workspace.record_run_with_artifact(
        lambda folder: _save(result, folder), _slug(result.family), dataset=dataset_name, model=result.family, config=config,
        metrics=metrics, device=result.device, wall_s=result.train_s, split=split_kind, status=result.status)
    result.run_id, result.artifact_dir = run.id, str(run.artifact_dir)


def _save(result: RunResult, folder: Path) -> None:
    result.model.save(folder)
    if result.per_user is not None:
        save_per_user(folder, result.per_user)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:40]


def memory_estimate_mb(family: str, overrides: dict[str, Any] | None, n_items: int) -> float | None:
    """Estimated peak training memory in MiB (None for models without an estimate)."""
    need = make_model(family, overrides).training_memory(n_items)
    return None if need is None else need / 2**20
