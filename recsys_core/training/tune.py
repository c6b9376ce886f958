"""Find the best settings of a model family on a dataset within a CPU budget: an Optuna study.

The search: Optuna's TPE sampler over the family's declared `search_space` (on its config, next to its
settings), the defaults enqueued as the first trial so they always compete, and a Hyperband pruner that
stops weak trials early on their validation curve. The pruner's resource is the trial's own CPU seconds
(in tenths), so trials are compared at equal cost whatever their shape. Trials see the **validation split
only**: the search holds a copy of the split whose test part is empty, and a trial's value is NDCG@10 over
every validation user.

The budget is CPU seconds (`loop.cpu_time`, as every training budget here): no trial starts once it is
spent, each trial's training budget is what is left (at most `trial_cpu_s`), and a trial still running when
the search passes its budget is stopped at its next progress event (every few optimizer steps, or after the
validation it is in) and counted as pruned ("budget"). The overrun is therefore at most one validation pass
plus a few steps of a loop model, or one fit of a one-pass model (EASE, item-kNN), whose fits cannot stop
half-way.

The study lives in the workspace (Optuna's RDB storage on `studies.db`), named by dataset, family and split,
so a restart, another tab or the CLI resumes or extends it: each call spends its own budget and adds trials.
The winner is then trained again with its settings on the train split and evaluated on the test split, once
per seed (`final_seeds`); each of those runs is recorded by `run_experiment` like any run, and its record
carries the study (trials, budget, space, parameter importances) under `metrics["tune"]`.

A tune job is a workspace job of kind `tune`, run in its own process by `training.worker` (as a training
job is), so any tab lists it, reads its trials from the study, and cancels it through the job's row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc

from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import EvalSet, Split
from recsys_core.errors import ConfigError, RecsysError
from recsys_core.evaluation.metrics import evaluate
from recsys_core.models import loop
from recsys_core.models.base import capabilities_of, family_class
from recsys_core.models.settings import Dimension, flatten_config, has_training_loop, resolve_name, search_space
from recsys_core.progress import Progress, ProgressEvent
from recsys_core.training.experiment import check_order, make_model, make_split, run_experiment

TUNE_KIND = "tune"  # the jobs table's kind of a tune job
MEMBERS = "members"  # a sequential model's seed ensemble (`models/ensemble.py`): the final runs only
TRANSITIONS = "transitions"  # the transition prior (`capabilities.transition_prior`): the final runs only
DEFAULTS, PER_USER = "defaults", "valid_ndcg_per_user"  # trial attributes: the defaults' trial; its users' NDCG@10
PAIRED_USERS = 10_000  # at most this many users' NDCG@10 kept per trial (~80 KB; 2 SE of a 0.3-spread diff ~0.006)
STUDIES_FILE = "studies.db"
METRIC = "ndcg@10"
FINAL_SEEDS = (0, 1, 2)
TRIAL_SHARE = 0.25  # a trial's training budget, as a share of the search budget: at least 4 trials fit
RESOURCE_PER_S = 10  # the pruner's step unit: tenths of a trial's CPU second
HYPERBAND_FACTOR = 3
DEMO_INTERACTIONS = 68_000  # about the demo's size (68,055): its default budget is the 15 CPU minutes
DEMO_BUDGET_S = 900.0
MIN_BUDGET_S, MAX_BUDGET_S = 120.0, 3600.0
MIN_TRIAL_S = 1.0  # no trial starts with less than this left
BUDGET_CUT = "out of the search's CPU budget"  # how a trial still running when the budget ran out ended
RESUMES = "resumes_trial"  # a queued trial's attribute: the budget-cut trial it runs again, in full
LIMIT_STOPS = ("cpu_budget", "max_steps", "epochs")
# A running trial beats every HEARTBEAT_S; one silent for GRACE_S (its process was killed, the server restarted) is
# marked failed when a search next starts on the study, instead of showing "running" for ever.
HEARTBEAT_S, GRACE_S = 30, 120


def default_budget_s(ds: Dataset) -> float:
    """The budget a form proposes: 15 CPU minutes for a demo-sized dataset, in proportion to the interactions
    (a trial's epoch costs about that), between 2 and 60 minutes."""
    return float(np.clip(DEMO_BUDGET_S * ds.n_interactions / DEMO_INTERACTIONS, MIN_BUDGET_S, MAX_BUDGET_S))


def tunable_families(families: list[str]) -> list[str]:
    """The families among `families` that declare a search space."""
    return [f for f in families if search_space(family_class(f).config_class)]


def space_of(family: str) -> dict[str, Dimension]:
    """The family's checked search space, or a ConfigError saying there is nothing to tune."""
    space = search_space(family_class(family).config_class)
    if not space:
        raise ConfigError(f"{family} declares no search space: it has nothing to tune",
                          hint="tune one of the families that declare one (BERT4Rec, SASRec+, EASE, item-kNN)")
    return space


def describe_space(space: dict[str, Dimension]) -> dict[str, dict]:
    """The space as JSON, for run records and the CLI."""
    return {name: {k: v for k, v in dataclasses.asdict(dim).items() if v is not None and (k != "log" or v)}
            for name, dim in space.items()}


def studies_path(root: str | Path) -> Path:
    """The SQLite file holding a workspace's studies."""
    return Path(root) / STUDIES_FILE


def study_name(dataset: str, family: str, split_kind: str = "leave_one_out", label: str = "") -> str:
    return ":".join(part for part in (dataset, family, split_kind, label) if part)


# A page follows a study every second: opening the storage (~0.09 CPU s) and the importances (~0.1 CPU s over a
# few trials, more over many) are computed once per file, and once per set of finished trials.
_STORAGES: KeyedCache[optuna.storages.RDBStorage] = KeyedCache(max_entries=16)
_IMPORTANCES: KeyedCache[dict] = KeyedCache(max_entries=64)


def _storage(path: str | Path, reader: bool = False) -> optuna.storages.RDBStorage:
    """The study storage in `path`; a `reader` (a page, `--show`) never creates or upgrades its tables, so it cannot
    race the search that is creating them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(path).resolve()
    url = f"sqlite:///{path}"
    inode = path.stat().st_ino if path.is_file() else None  # a replaced workspace's file is another database
    return _STORAGES.get_or_compute((url, inode, reader), lambda: _open_storage(url, reader))


def _open_storage(url: str, reader: bool) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}},
                                          skip_compatibility_check=reader, skip_table_creation=reader,
                                          heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def validation_only(split: Split) -> Split:
    """The split a search sees: train and validation, and an empty test part (no trial can read it)."""
    empty = EvalSet(np.zeros(0, dtype=np.int32), [], [])
    return dataclasses.replace(split, test=empty)


@dataclass
class TuneResult:
    study: str
    family: str
    budget_cpu_s: float  # this call's budget
    spent_cpu_s: float  # what this call's search spent
    stopped: str  # "budget", "trials" (max_trials reached) or "cancelled"
    trials: list[dict]  # every trial of the study (earlier calls too)
    best: dict  # {"number", "value", "params", "defaults", "vs_defaults", "cpu_s", "stopped", "under_trained"}; {}
    # without a finished trial (`_best`: the defaults stay the winner unless a trial beats them beyond noise)
    importances: dict[str, float]
    space: dict[str, dict]
    trial_cpu_s: float
    final: dict = field(default_factory=dict)  # test metrics over the seeds: {"ndcg@10": {mean, std, seeds}, ...}
    run_ids: list[int] = field(default_factory=list)
    queued_leader: dict | None = None  # a budget-cut trial that was ahead, queued to run first on resume

    def summary(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Search:
    """What the trials of one `tune` call share."""

    ds: Dataset
    family: str
    split: Split
    fixed: dict
    space: dict[str, Dimension]
    budget_s: float
    trial_cpu_s: float
    seed: int
    progress: Progress
    cpu0: float = field(default_factory=loop.cpu_time)

    def spent(self) -> float:
        return loop.cpu_time() - self.cpu0

    def left(self) -> float:
        return self.budget_s - self.spent()


def tune(ds: Dataset, family: str, *, budget_cpu_s: float, storage: str | Path, dataset_name: str | None = None,
         overrides: dict[str, Any] | None = None, split: Split | None = None, split_kind: str = "leave_one_out",
         trial_cpu_s: float | None = None, max_trials: int | None = None, seed: int = 0,
         final_seeds: tuple[int, ...] = FINAL_SEEDS, progress: Progress | None = None, workspace: Any = None,
         label: str = "") -> TuneResult:
    """Search `family`'s space on `ds`'s validation split for `budget_cpu_s` CPU seconds (more trials of the
    study stored in `storage` under its name), then train the winner once per seed in `final_seeds` and
    evaluate it on the test split (recorded in `workspace` when given). `overrides` fix settings the search
    leaves alone; `max_trials` caps this call's trials."""
    config_class = family_class(family).config_class
    fixed = {resolve_name(config_class, name): value for name, value in (overrides or {}).items()}
    space = {name: dim for name, dim in space_of(family).items() if name not in fixed}  # fixed: not searched
    if not budget_cpu_s > 0:
        raise ConfigError(f"the tuning budget must be above 0 CPU seconds, got {budget_cpu_s}",
                          hint="give a budget in CPU seconds, e.g. 900 (15 CPU minutes)")
    make_model(family, fixed)  # a bad fixed setting is refused before any trial
    check_order(make_model(family, fixed), ds)
    full = split or make_split(ds, split_kind)
    progress = progress or Progress()
    cap = float(trial_cpu_s or max(budget_cpu_s * TRIAL_SHARE, MIN_TRIAL_S))
    search = _Search(ds, family, validation_only(full), fixed, space, float(budget_cpu_s), cap, seed, progress)
    name = study_name(dataset_name or ds.name, family, full.kind, label)
    study = _open_study(name, storage, search)
    stopped = _optimize(study, search, max_trials)
    spent = search.spent()
    if stopped == "budget":
        requeue_cut_leader(study)
    trials = study.get_trials(deepcopy=False)
    best = _best(trials)
    # Cancel frees the machine at once: the importances (fANOVA) are left to whoever reads the study next
    weights = {} if stopped == "cancelled" else importances(study, trials)
    result = TuneResult(name, family, float(budget_cpu_s), round(spent, 2), stopped, trials_table(trials), best,
                        weights, describe_space(space), cap, queued_leader=queued_leader(trials))
    if best and final_seeds and not progress.cancelled:
        _final(result, search, full, final_seeds, workspace, dataset_name or ds.name)
    return result


def _open_study(name: str, storage: str | Path, search: _Search) -> optuna.Study:
    storage_ = _storage(storage)
    done = len(optuna.load_study(study_name=name, storage=storage_).trials) if _exists(name, storage_) else 0
    # A resumed study samples on from where it was, not the same random start-up points again.
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=search.seed + done, n_startup_trials=5, multivariate=True)
    max_resource = max(int(search.trial_cpu_s * RESOURCE_PER_S), HYPERBAND_FACTOR ** 2)
    pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, max_resource // HYPERBAND_FACTOR ** 3),
                                            max_resource=max_resource, reduction_factor=HYPERBAND_FACTOR)
    study = optuna.create_study(study_name=name, storage=storage_, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if not done:  # the defaults (with the fixed settings) compete as the first trial
        study.enqueue_trial(_defaults_in_space(search), user_attrs={DEFAULTS: True})
        study.set_user_attr("family", search.family)
        study.set_user_attr("space", describe_space(search.space))
    study.set_user_attr("budgets", [*study.user_attrs.get("budgets", []), search.budget_s])
    return study


def _exists(name: str, storage: optuna.storages.RDBStorage) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _defaults_in_space(search: _Search) -> dict:
    """The defaults' value of every searched setting the space holds (one it does not is left to the sampler)."""
    flat = flatten_config(make_model(search.family, search.fixed).config)
    return {name: flat[name] for name, dim in search.space.items() if _holds(dim, flat[name])}


def _holds(dim: Dimension, value: Any) -> bool:
    if dim.choices is not None:
        return value in dim.choices
    return dim.low <= value <= dim.high


def _optimize(study: optuna.Study, search: _Search, max_trials: int | None) -> str:
    made = 0
    while True:
        if search.progress.cancelled:
            return "cancelled"
        if max_trials is not None and made >= max_trials:
            return "trials"
        if search.left() < MIN_TRIAL_S:
            return "budget"
        study.optimize(lambda trial: _trial(trial, search), n_trials=1, catch=(RecsysError,))
        made += 1
        _announce(study, search)


def _announce(study: optuna.Study, search: _Search) -> None:
    trials = study.get_trials(deepcopy=False)
    best = _best(trials)
    words = f"winner so far: trial {best['number']}, {METRIC} {best['value']:.4f}" if best else "no finished trial yet"
    if best.get("defaults") and best.get("vs_defaults"):
        words += " (the defaults: no trial beats them beyond the validation's noise yet)"
    spent = search.spent()
    search.progress.update(int(min(spent, search.budget_s)), math.ceil(search.budget_s),
                           epoch=len(trials), metrics={"best": best.get("value")} if best else {},
                           message=f"{len(trials)} trials, {spent:.0f} of {search.budget_s:.0f} CPU s; {words}")


def _trial(trial: optuna.Trial, search: _Search) -> float:
    try:
        return _run_trial(trial, search)
    except RecsysError as err:  # a bad combination of settings, out of memory: this trial fails, the search goes on
        trial.set_user_attr("stopped", f"failed: {err}")
        raise


def _run_trial(trial: optuna.Trial, search: _Search) -> float:
    params = {name: _suggest(trial, name, dim) for name, dim in search.space.items()}
    values = {**search.fixed, **params}
    cls = family_class(search.family)
    budget = min(search.trial_cpu_s, max(search.left(), MIN_TRIAL_S))
    if has_training_loop(cls.config_class):
        values.update({"train.cpu_budget_s": budget, "train.seed": search.seed})
    if MEMBERS in values:  # trials compare single models on one curve each; the members train in the final runs
        values[MEMBERS] = 1
    if capabilities_of(search.family, values).transition_prior:  # its table counts the items a trial is scored on
        values[TRANSITIONS] = "off"
    model = make_model(search.family, values)
    refusal = model.refusal(search.ds)
    if refusal is not None:
        trial.set_user_attr("stopped", f"refused: {refusal.reason}")
        raise optuna.TrialPruned()
    watch = _Watch(trial, search)
    model.fit(search.ds, progress=watch.progress, split=search.split)
    report = model.fit_report()
    trial.set_user_attr("cpu_s", round(watch.cpu_s(), 2))
    trial.set_user_attr("budget_cpu_s", round(budget, 2))
    if watch.why:  # pruned on its curve, out of the search's budget, or cancelled
        trial.set_user_attr("stopped", watch.why)
        raise optuna.TrialPruned()
    scored = evaluate(model, search.split.valid, seed=0, per_user=True)
    value = float(scored[METRIC])
    trial.set_user_attr(PER_USER, paired_sample(scored["per_user"][METRIC].to_numpy(np.float64)))
    trial.set_user_attr("cpu_s", round(watch.cpu_s(), 2))
    trial.set_user_attr("stopped", report.get("stopped") or "one pass")
    trial.set_user_attr("best_epoch", report.get("best_epoch"))
    trial.set_user_attr("under_trained", _limited_while_rising(report.get("stopped"), watch.curve))
    return value


def paired_sample(values: np.ndarray) -> list[float]:
    """Validation users' NDCG@10 as a trial keeps them, so the winner is compared with the defaults user by user:
    in the split's order, or a seeded sample of `PAIRED_USERS` of them (the same users in every trial of a study),
    so every page that reads the study stays fast on a large dataset."""
    if len(values) > PAIRED_USERS:
        values = values[np.sort(np.random.default_rng(0).choice(len(values), PAIRED_USERS, replace=False))]
    return np.round(values, 5).tolist()


def _suggest(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, list(dim.choices))
    if isinstance(dim.low, int) and isinstance(dim.high, int) and not isinstance(dim.step, float):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log, step=int(dim.step or 1))
    return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log, step=dim.step)


def _limited_while_rising(stopped: str | None, curve: list[float]) -> bool:
    """A limit stopped the trial while its validation still rose (its best was one of its last two)."""
    if stopped not in LIMIT_STOPS or len(curve) < 2:
        return False
    best = int(np.argmax(curve))
    return best >= len(curve) - 2 and curve[best] > curve[0]


class _Watch:
    """A trial's progress: reports each validation to the pruner (at the trial's CPU seconds so far) and stops
    the trial when the pruner says so, when the search's budget is spent, or when the search is cancelled."""

    def __init__(self, trial: optuna.Trial, search: _Search) -> None:
        self.trial, self.search = trial, search
        self.progress = Progress(callback=self._on_event)
        self.cpu0 = loop.cpu_time()
        self.why = ""
        self.curve: list[float] = []

    def cpu_s(self) -> float:
        return loop.cpu_time() - self.cpu0

    def _on_event(self, event: ProgressEvent) -> None:
        if self.why:
            return
        value = event.metrics.get(METRIC) if event.metrics else None
        if value is not None and math.isfinite(value):
            self.curve.append(float(value))
            self.trial.report(float(value), int(self.cpu_s() * RESOURCE_PER_S))
            if self.trial.should_prune():
                self.why = f"pruned at {self.cpu_s():.1f} CPU s ({METRIC} {value:.4f})"
        if self.search.progress.cancelled:
            self.why = "cancelled"
        elif self.search.left() <= 0:
            self.why = BUDGET_CUT
        if self.why:
            self.progress.cancel()


def _best(trials: list[optuna.trial.FrozenTrial]) -> dict:
    """The winner: the highest validation NDCG@10, unless its gain over the defaults' trial is within the
    validation's noise (under two standard errors of the paired per-user difference), when the defaults win:
    the best of a dozen noisy trials is partly luck, and its luck does not carry over to the test split."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return {}
    top = max(done, key=lambda t: t.value)
    defaults = next((t for t in done if t.user_attrs.get(DEFAULTS)), None)
    versus = vs_defaults(top, defaults) if defaults is not None and defaults is not top else None
    t = defaults if versus is not None and not versus["beyond_noise"] else top
    return {"number": t.number, "value": float(t.value), "params": dict(t.params), "defaults": t is defaults,
            "vs_defaults": versus, **{k: t.user_attrs.get(k) for k in ("cpu_s", "stopped", "under_trained")}}


def vs_defaults(top: optuna.trial.FrozenTrial, defaults: optuna.trial.FrozenTrial) -> dict | None:
    """`top`'s validation gain over the defaults, paired user by user: {trial, gain, two_se, users, beyond_noise};
    None when either trial lacks its per-user values (a study from before they were kept)."""
    a, b = top.user_attrs.get(PER_USER), defaults.user_attrs.get(PER_USER)
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    diff = np.asarray(a) - np.asarray(b)
    gain, two_se = float(diff.mean()), float(2 * diff.std(ddof=1) / math.sqrt(len(diff)))
    return {"trial": top.number, "gain": round(gain, 5), "two_se": round(two_se, 5), "users": len(diff),
            "beyond_noise": gain > two_se}


def trials_table(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    """One row per trial: number, state, value, the best value so far, CPU seconds, how it stopped, params."""
    rows, best = [], -math.inf
    for t in trials:
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
        best = max(best, value) if value is not None else best
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": value,
                     "best_so_far": None if best == -math.inf else best, "cpu_s": t.user_attrs.get("cpu_s"),
                     "stopped": t.user_attrs.get("stopped", "") or _not_run(t), "params": dict(t.params)})
    return rows


def _not_run(trial: optuna.trial.FrozenTrial) -> str:
    """Why a queued trial has no result: the budget was spent before it started (it runs when the study resumes)."""
    if trial.state != optuna.trial.TrialState.WAITING:
        return ""
    if RESUMES in trial.user_attrs:
        return (f"queued: trial {trial.user_attrs[RESUMES]} again, in full (it was ahead when the budget ran out); "
                "it runs first when the search resumes")
    return "not started: the budget was spent; it runs first when the search resumes"


def requeue_cut_leader(study: optuna.Study) -> dict | None:
    """A trial the budget stopped while it was ahead of every finished trial (its last validation above their
    best) is queued to run again, in full, first when the search resumes: the budget, not its settings, ended it.
    Returns {"trial", "value", "cpu_s"} of the trial queued (or already queued), else None."""
    trials = study.get_trials(deepcopy=False)
    done = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    cut = [t for t in trials if t.user_attrs.get("stopped") == BUDGET_CUT and t.intermediate_values]
    if not cut:
        return None
    last = cut[-1]  # one trial runs at a time: the budget cuts at most the last one of a call
    value = _last_validation(last)
    if done and value <= max(done):
        return None
    if not any(t.state == optuna.trial.TrialState.WAITING and t.user_attrs.get(RESUMES) == last.number for t in trials):
        study.enqueue_trial(dict(last.params), user_attrs={RESUMES: last.number}, skip_if_exists=False)
    return {"trial": last.number, "value": round(float(value), 5), "cpu_s": last.user_attrs.get("cpu_s")}


def queued_leader(trials: list[optuna.trial.FrozenTrial]) -> dict | None:
    """The budget-cut leader waiting to run again (`requeue_cut_leader`), as pages and the CLI show it."""
    waiting = next((t for t in trials if t.state == optuna.trial.TrialState.WAITING and RESUMES in t.user_attrs), None)
    if waiting is None:
        return None
    cut = next(t for t in trials if t.number == waiting.user_attrs[RESUMES])
    return {"trial": cut.number, "value": _last_validation(cut), "cpu_s": cut.user_attrs.get("cpu_s")}


def _last_validation(trial: optuna.trial.FrozenTrial) -> float | None:
    """The last validation a trial reported to the pruner (its steps are its CPU seconds so far)."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def importances(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> dict[str, float]:
    """Each parameter's share of the value's variance over the finished trials (Optuna's fANOVA);
    {} until at least two finished trials differ."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2 or len({t.value for t in done}) < 2:
        return {}
    # the finished trials decide the answer (their values with them: the same name in another workspace differs)
    key = (study.study_name, tuple((t.number, t.value, tuple(sorted(t.params.items()))) for t in done))
    return _IMPORTANCES.get_or_compute(key, lambda: _importances(study))


def _importances(study: optuna.Study) -> dict[str, float]:
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as err:  # e.g. every finished trial drew the same values
        logging.getLogger(__name__).info("no importances: %s", err)
        return {}


def _schema_stamped(path: Path) -> bool:
    """The search has finished making the storage: its tables and alembic's version row. Optuna's storage stamps
    that row itself when it finds the tables without it, even for a reader that skips table creation, so a page
    opening the storage between the search's two steps stamped it first and the search died on the row's UNIQUE
    constraint. Checked read-only with sqlite3, which opens nothing of Optuna's."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            if not conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone()[0]:
                return False
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:  # locked or half written: not ready yet
        return False


def read_study(storage: str | Path, name: str) -> dict:
    """A stored study as any tab or the CLI shows it: trials, best, importances, budgets; {} when none."""
    if not _schema_stamped(Path(storage)):  # reading never creates the file, its tables or its version row
        return {}
    try:
        storage_ = _storage(storage, reader=True)
        if not _exists(name, storage_):
            return {}
        study = optuna.load_study(study_name=name, storage=storage_)
        trials = study.get_trials(deepcopy=False)
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return {}  # the first search is still creating the tables (a reader never creates them)
    return {"study": name, "trials": trials_table(trials), "best": _best(trials),
            "importances": importances(study, trials), "queued_leader": queued_leader(trials),
            "budgets": study.user_attrs.get("budgets", []), "space": study.user_attrs.get("space", {})}


def _final(result: TuneResult, search: _Search, full: Split, seeds: tuple[int, ...], workspace: Any,
           dataset_name: str) -> None:
    """Train the winner once per seed on the train split, evaluate on the test split; record the study on
    each run."""
    loop_model = has_training_loop(family_class(search.family).config_class)
    seeds = seeds if loop_model else seeds[:1]  # a one-pass model gives the same model for every seed
    values = {**search.fixed, **result.best["params"]}
    if loop_model:  # each member of the winner gets what one trial got
        values["train.cpu_budget_s"] = search.trial_cpu_s * values.get(MEMBERS, 1)
    runs = []
    for i, seed in enumerate(seeds):
        search.progress.update(i, len(seeds), message=f"training the winner on seed {seed} "
                                                       f"({i + 1} of {len(seeds)}), then the test split")
        run = run_experiment(search.ds, search.family, {**values, **({"train.seed": seed} if loop_model else {})},
                             split=full, progress=search.progress.quiet(), workspace=workspace,
                             dataset_name=dataset_name)
        if run.status == "cancelled":
            result.stopped = "cancelled"
            return
        runs.append(run)
    result.final = {key: _spread([r.metrics[key] for r in runs], seeds) for key in (METRIC, "hr@10")}
    result.final["cpu_s"] = round(sum(r.cpu_s for r in runs), 2)  # all seeds' training and testing
    result.final["stop_reasons"] = [r.extra.get("stop_reason", "one pass") for r in runs]
    result.run_ids = [r.run_id for r in runs if r.run_id is not None]
    if workspace is not None:
        record = {k: v for k, v in result.summary().items() if k not in ("final", "run_ids")}
        for run in runs:
            if run.run_id is not None:
                workspace.update_run(run.run_id, metrics={**run.metrics, "run": {"cpu_s": round(run.cpu_s, 2),
                                                                                    **run.extra}, "tune": record})


def _spread(values: list[float], seeds: tuple[int, ...]) -> dict:
    """As bench/results/peers-*.json spell it: mean, std, the seeds, and each seed's value."""
    return {"mean": round(float(np.mean(values)), 6), "std": round(float(np.std(values)), 6), "seeds": list(seeds),
            "values": [round(float(v), 6) for v in values]}


# ---- the job: a tune run in its own process (`training.worker` calls `run_tune_job` for kind "tune") ------------


def job_params(budget_cpu_s: float, overrides: dict | None = None, trial_cpu_s: float | None = None,
               max_trials: int | None = None, seed: int = 0, final_seeds: tuple[int, ...] = FINAL_SEEDS) -> dict:
    """What a tune job's row stores as its parameters."""
    return {"budget_cpu_s": float(budget_cpu_s), "overrides": dict(overrides or {}), "trial_cpu_s": trial_cpu_s,
            "max_trials": max_trials, "seed": seed, "final_seeds": list(final_seeds)}


def run_tune_job(store: Any, job: Any, progress: Progress) -> dict:
    """Run the search of tune job `job` (a `JobRecord`) on the store's workspace; its result summary."""
    p = job.params
    ds = store.workspace.load_dataset(job.dataset)
    result = tune(ds, job.family, budget_cpu_s=p["budget_cpu_s"], storage=studies_path(store.workspace.root),
                  dataset_name=job.dataset, overrides=p.get("overrides"), split_kind=job.split,
                  trial_cpu_s=p.get("trial_cpu_s"), max_trials=p.get("max_trials"), seed=p.get("seed", 0),
                  final_seeds=tuple(p.get("final_seeds", FINAL_SEEDS)), progress=progress,
                  workspace=store.workspace)
    return result.summary()
