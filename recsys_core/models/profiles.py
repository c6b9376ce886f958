"""Training profiles: settings that fit the machine, and how long a run will take on it.

A profile is a preset of training settings: `demo` (fast, near-full quality; the CPU's proposal) or `full`
(the models' own defaults, tuned for quality; the GPU's proposal). Every budget is in optimizer steps or CPU
seconds, never wall-clock alone, so a busy machine trains the same model, only slower.

`estimate_training` says how long a run will take before it starts, from a few real training steps and one
small validation on the actual data, timed on this machine and cached per dataset, model and settings: a range
of CPU seconds from the earliest stop the stop rules allow (early stopping after `patience` validations) to the
latest (the epochs, the step cap, or the epoch in which the CPU budget runs out), at the fastest 5-step stretch
of the probe and at the 95 % upper confidence bound of its mean step cost (a one-thread step costs about the same
all run long: bench/eta.py). A job trains on one thread (`recsys_core/threads.py`), as the probe does in the server,
so a CPU second is the same work at any load; the wall time is that CPU time at the load measured now.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from recsys_core.background import BackgroundJob
from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.splits import Split
from recsys_core.evaluation.metrics import evaluate, train_popularity
from recsys_core.models import loop
from recsys_core.models.base import capabilities_of, family_class
from recsys_core.models.settings import TRAIN, build_config, flatten_config, has_training_loop
from recsys_core.progress import Progress, ProgressEvent
from recsys_core.threads import cores

CPU, GPU = "cpu", "gpu"
DEMO, FULL = "demo", "full"

# Shared by every family trained by the sequential transformers' recipe.
_SEQUENTIAL_DEMO = {"train.patience": 5, "train.max_steps": 2700}


@dataclass(frozen=True)
class Profile:
    """A named preset of training settings; `settings` are flat overrides per family (`train.patience`)."""

    name: str
    label: str
    help: str
    cpu_budget_s: float  # the time budget proposed for every model with a training loop (0 = none)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budgets: Mapping[str, float] = field(default_factory=dict)  # a family's own budget instead of `cpu_budget_s`

    def budget_for(self, family: str) -> float:
        """The CPU-seconds budget this profile proposes for `family`."""
        return float(self.budgets.get(family, self.cpu_budget_s))

    def overrides(self, family: str) -> dict[str, Any]:
        """The flat settings this profile gives `family` (nothing for a model without a training loop)."""
        if not has_training_loop(family_class(family).config_class):
            return {}
        return {**self.settings.get(family, {}), "train.cpu_budget_s": self.budget_for(family)}


PROFILES: dict[str, Profile] = {
    # On the demo data the models peak after 7-13 epochs of 137 steps (~6 CPU s an epoch on an idle 2-core box,
    # bench/results/quality-demo-20261201.json), so 5 validations without improvement and a cap of 2,700 steps
    # (~20 epochs, ~2 CPU-min) keep near-full quality within 3 minutes; the CPU budget bounds larger data
    # (ML-100k's windows are ~6x longer). Measured with this profile at load 10-23 (2026-12-02, seed 0, a job on
    # every core): the budget ended both runs after 3-4 epochs (60-80 CPU s an epoch under that load): BERT4Rec
    # 0.1130 NDCG@10 (267 CPU s), SASRec+ 0.1088 (253 CPU s); defaults, 3 seeds: 0.1134 and 0.1201. On one thread
    # (2026-12-06, load 1.5-3, bench/results/eta-20261206.json) both early-stop on the demo in 47-52 CPU s (whole
    # job); on ML-100k BERT4Rec reaches the step cap in ~119 CPU s and SASRec+ early-stops in ~115. With shuffled
    # batches and the transition prior (2026-12-07, eta-demo-*/eta-ml-100k-*, whole jobs): demo BERT4Rec 90 CPU s
    # (step cap), SASRec+ 69 (early stop); ML-100k 84 and 66 (both early stop). The default blend (six models) on the
    # demo: 563 and 576 CPU s a whole job, within its estimate both times (bench/results/eta-20261207.json).
    DEMO: Profile(DEMO, "Demo: fast, near-full quality",
                  "Early stopping after 5 validations without improvement, at most 2,700 steps and 4 CPU-minutes, "
                  "15 for a blend, whose models share them (on the demo, a BERT4Rec or SASRec+ run takes 1-1.5 "
                  "CPU-minutes, the default blend about 10).",
                  cpu_budget_s=240.0,
                  settings={"bert4rec": _SEQUENTIAL_DEMO, "sasrec": _SEQUENTIAL_DEMO, "hybrid": _SEQUENTIAL_DEMO,
                            "blend": _SEQUENTIAL_DEMO},
                  # a blend trains several models, each on its share: 4 CPU-minutes would give its six 40 s each
                  budgets={"blend": 900.0}),
    FULL: Profile(FULL, "Full: best quality, slower",
                  "The models' own defaults (tuned on ML-100k), with a safety cap of 30 CPU-minutes.",
                  cpu_budget_s=1800.0),
}
# What each device class proposes: a CPU gets the demo profile, a GPU (CUDA or Apple MPS) the full one.
DEFAULT_PROFILE = {CPU: DEMO, GPU: FULL}


def device_class(device: str = "auto") -> str:
    """"gpu" when `device` resolves to CUDA or Apple MPS, else "cpu"."""
    return CPU if loop.pick_device(device).type == "cpu" else GPU


def describe_device(device: str = "auto") -> str:
    """The training device in words: 'CPU (2 cores)', 'CUDA GPU (NVIDIA H200)'."""
    resolved = loop.pick_device(device)
    if resolved.type == "cuda":
        return f"CUDA GPU ({torch.cuda.get_device_name(resolved)})"
    if resolved.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count() or 1} cores)"


def profile_for(device: str = "auto", name: str | None = None) -> Profile:
    """The profile `name`, or the one the device proposes."""
    return PROFILES[name or DEFAULT_PROFILE[device_class(device)]]


# ---- how long a run takes ---------------------------------------------------------------------------

PROBE_STEPS = 40  # steps timed per estimate, reported every 5; the first 5 pay warm-up and are not counted
# Users of the timed validation: the run's own plan up to this many (a 100-user validation cost 2.5x as much per
# user as the demo's planned 2,665, scoring and ranking the catalogue in fuller chunks: bench/eta.py)
PROBE_VALID_USERS = 1000
# A job's process imports torch and transformers and loads the dataset before its first step:
# 7-8 CPU s measured on the 2-core box (`python -c "import recsys_core.training.worker, ..."`).
START_CPU_S = 8.0
_ESTIMATES: KeyedCache[Estimate] = KeyedCache(max_entries=64)
_JOBS: KeyedCache[EstimateJob] = KeyedCache(max_entries=64)
_PROBING = threading.Lock()  # one probe at a time: sessions asking at once must not slow each other's


@dataclass(frozen=True)
class Estimate:
    """How long a run will take at the rates measured on this machine: a range, from the earliest stop its stop
    rules allow to the latest, in CPU seconds (what a budget counts) and in wall seconds at the load measured."""

    lower_cpu_s: float  # start-up, training to the earliest stop, the final evaluation
    upper_cpu_s: float  # the same to the latest stop
    lower_s: float
    upper_s: float
    bound: str  # what ends the run at the latest: "cpu_budget", "max_steps" or "epochs"
    early_stopping: bool  # validation may end it sooner
    steps_per_epoch: int
    planned_steps: int  # the steps the run makes at most, at the measured rate (the progress bar's 100 %)
    step_cpu_s: float  # CPU seconds a step, the probe's mean
    step_wall_s: float
    validation_cpu_s: float  # one validation of the run's validation users
    measured_load: float  # 1-minute load average when measured
    threads: int  # torch threads of the probe (a job trains on `training_threads()`)
    refit_steps: int = 0  # refit=true: the most steps the refit can make, the first run's (0: no refit)
    members: int = 1  # models trained one after another (`members`); the steps above are each one's
    # a model made of others trained one after another (a blend's parts): (family, estimate) of each, which the
    # ranges above add up (the fields between them are the first part's)
    parts: tuple[tuple[str, Estimate], ...] = ()

    def text(self) -> str:
        """'2 min to 4 min of CPU time (about 3 min to 6 min at this load)'; 'about 50 s of CPU time (about 50 s at
        this load)' when both ends read the same."""
        wall = human_range(self.lower_s, self.upper_s)
        return (f"{human_range(self.lower_cpu_s, self.upper_cpu_s)} of CPU time "
                f"({wall if wall.startswith('about ') else 'about ' + wall} at this load)")


def human_range(low: float, high: float) -> str:
    """'2 min to 4 min', or 'about 2 min' when both ends read the same."""
    low_text, high_text = human_duration(low), human_duration(high)
    return f"about {low_text}" if low_text == high_text else f"{low_text} to {high_text}"


def human_duration(seconds: float) -> str:
    """'40 s', '2 min', '1 h 5 min': what a person reads at a glance."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{max(5, 5 * round(seconds / 5))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def can_estimate(family: str, overrides: Mapping[str, Any] | None = None) -> bool:
    """Whether `estimate_training` measures this family with these settings: models with a training loop that
    need no text encoder (probing one would load and run the encoder over the catalogue while the page waits)."""
    return has_training_loop(family_class(family).config_class) and \
        not capabilities_of(family, dict(overrides or {})).text


def estimate_training(ds: Dataset, family: str, overrides: Mapping[str, Any], split: Split) -> Estimate | None:
    """How long training `family` with flat `overrides` on `split` of `ds` takes here, at most; None for a
    model `can_estimate` does not cover. Measured once per dataset, model, settings and split."""
    if not can_estimate(family, overrides):
        return None
    return _ESTIMATES.get_or_compute(_key(ds, family, overrides, split),
                                     lambda: _estimate(ds, family, dict(overrides), split))


class EstimateJob(BackgroundJob):
    """`estimate_training` on a daemon thread, so a page shows the form while the steps are timed."""

    def __init__(self, ds: Dataset, family: str, overrides: Mapping[str, Any], split: Split) -> None:
        super().__init__(f"estimate-{family}")
        self.args = (ds, family, dict(overrides), split)

    def work(self) -> tuple[Estimate | None, str]:
        with _PROBING:
            return estimate_training(*self.args), "finished"

    def release(self) -> None:
        self.args = ()  # the dataset and split stay alive only while measuring


def estimate_job(ds: Dataset, family: str, overrides: Mapping[str, Any], split: Split) -> EstimateJob | None:
    """The measurement of `estimate_training` on its own thread, started once per dataset, model, settings
    and split (a finished one answers at once); None for a model `can_estimate` does not cover."""
    if not can_estimate(family, overrides):
        return None
    return _JOBS.get_or_compute(_key(ds, family, overrides, split),
                                lambda: EstimateJob(ds, family, overrides, split).start())


def _key(ds: Dataset, family: str, overrides: Mapping[str, Any], split: Split) -> tuple:
    return (ds.name, ds.n_users, ds.n_interactions, ds.catalogue_digest, family,
            tuple(sorted((k, repr(v)) for k, v in overrides.items())), split.kind, len(split.valid))


def _estimate(ds: Dataset, family: str, overrides: dict[str, Any], split: Split) -> Estimate:
    config = build_config(family_class(family).config_class, overrides)
    parts = family_class(family)(config).components()
    if parts:
        return _sum_of_parts(ds, parts, flatten_config(config).get("transitions"), split)
    members = getattr(config, "members", 1)  # each trains as a run of its own, on an equal share of the budget
    train = dataclasses.replace(config.train, cpu_budget_s=config.train.cpu_budget_s / members)
    steps_per_epoch, n_valid, every = _plan(ds, family, overrides, split)
    with loop.thread_cpu_clock():  # this thread's CPU only: the server runs other sessions' work beside it
        rates = _probe(ds, family, overrides, split, min(n_valid, PROBE_VALID_USERS))
    if rates.batch_size != train.batch_size:  # memory planning halved the batch: more steps an epoch
        steps_per_epoch, n_valid, every = _plan(ds, family, overrides, split, rates.batch_size)
    rates.steps_per_epoch = steps_per_epoch
    validation_cpu = rates.valid_cpu_per_user * n_valid
    cap = loop.planned_steps(train, rates.steps_per_epoch)
    early = bool(train.patience > 0 and n_valid)
    # the earliest early stop: the first validation, then `patience` without improvement
    first_stop = min(cap, (train.patience + 1) * every * rates.steps_per_epoch) if early else cap
    low, _ = _training_cpu(train, first_stop, rates.steps_per_epoch, every, validation_cpu, rates.step_cpu_low)
    high, bound = _training_cpu(train, cap, rates.steps_per_epoch, every, validation_cpu, rates.step_cpu_high)
    if not early and bound == "cpu_budget":
        low = min(low, train.cpu_budget_s)  # it stops only after passing the budget
    refit = bool(getattr(config, "refit", False) and early and split.refittable)
    if refit:
        low, high = _with_refit(train, low, high, min(first_stop, every * rates.steps_per_epoch) * rates.step_cpu_low,
                                cap * rates.step_cpu_high)
    low, high = low * members, high * members
    # + the final evaluation and the prior's weighing (every member encodes each test and validation user)
    fixed = START_CPU_S + rates.setup_cpu + (rates.test_cpu_per_user * len(split.test)
                                             + rates.prior_cpu_per_user * n_valid) * members
    planned = cap if bound != "cpu_budget" else min(cap, _budget_steps(train, rates, every, validation_cpu))
    return Estimate(lower_cpu_s=fixed + low, upper_cpu_s=fixed + high, lower_s=(fixed + low) * min(1.0, rates.wall_per_cpu),
                    upper_s=(fixed + high) * rates.wall_per_cpu, bound=bound, early_stopping=early,
                    steps_per_epoch=rates.steps_per_epoch, planned_steps=planned, step_cpu_s=rates.step_cpu,
                    step_wall_s=rates.step_cpu * rates.wall_per_cpu, validation_cpu_s=validation_cpu,
                    measured_load=os.getloadavg()[0], threads=torch.get_num_threads(), refit_steps=planned * refit,
                    members=members)


def _sum_of_parts(ds: Dataset, parts: list[tuple[str, Any]], transitions: str | None, split: Split) -> Estimate:
    """The estimates of models trained one after another, added up: each part's own (cached: a blend and a run of
    its part share the measurement), one process start. A part is measured weighing the prior when the whole
    weighs one (`transitions`), so the prior's weighing counts once per member: a little over what it costs."""
    each = [(family, estimate_training(ds, family, {**flatten_config(cfg), **(
        {"transitions": transitions} if transitions else {})}, split)) for family, cfg in parts]
    first, starts = each[0][1], START_CPU_S * (len(each) - 1)
    low, high = sum(e.lower_cpu_s for _, e in each) - starts, sum(e.upper_cpu_s for _, e in each) - starts
    return dataclasses.replace(first, lower_cpu_s=low, upper_cpu_s=high, lower_s=low * first.lower_s / first.lower_cpu_s,
                               upper_s=high * first.upper_s / first.upper_cpu_s,
                               early_stopping=any(e.early_stopping for _, e in each),
                               members=sum(e.members for _, e in each), parts=tuple(each))


def _with_refit(train: Any, low: float, high: float, refit_low: float, refit_high: float) -> tuple[float, float]:
    """The range with a refit after early stopping: at least the steps to the first validation again (the earliest
    stop's best), at most the cap's again; under a CPU budget the refit runs only where the budget pays for it."""
    if train.cpu_budget_s:
        fits = refit_low <= train.cpu_budget_s - low
        return low + refit_low * fits, max(high, min(high + refit_high, train.cpu_budget_s))
    return low + refit_low, high + refit_high


def _training_cpu(train: Any, steps: int, steps_per_epoch: int, every: int, validation_cpu: float,
                  step_cpu: float) -> tuple[float, str]:
    """(CPU seconds of the loop, what ends it) for a run of at most `steps` steps: its steps and validations
    (one more for weights the cadence left unvalidated), or the CPU budget and the epoch that passes it."""
    epochs = math.ceil(steps / max(1, steps_per_epoch))
    validations = math.ceil(epochs / every) + (1 if epochs % every else 0) if validation_cpu else 0
    cpu = steps * step_cpu + validations * validation_cpu
    bound = "max_steps" if train.max_steps and steps == train.max_steps else "epochs"
    if train.cpu_budget_s:
        epoch_cpu = steps_per_epoch * step_cpu + validation_cpu  # the loop stops after the epoch passing the budget
        if train.cpu_budget_s + epoch_cpu < cpu:
            return train.cpu_budget_s + epoch_cpu, "cpu_budget"
    return cpu, bound


def _budget_steps(train: Any, rates: _Rates, every: int, validation_cpu: float) -> int:
    """Steps the CPU budget buys at the mean rate: to the end of the epoch in which it runs out."""
    epoch_cpu = rates.steps_per_epoch * rates.step_cpu + validation_cpu / every
    return math.ceil(train.cpu_budget_s / epoch_cpu) * rates.steps_per_epoch


def _plan(ds: Dataset, family: str, overrides: dict[str, Any], split: Split,
          batch_size: int | None = None) -> tuple[int, int, int]:
    """(steps an epoch, validation users, epochs between validations): the plan the fit itself makes, at the
    configured batch size or `batch_size` (what memory planning left)."""
    model = family_class(family)(build_config(family_class(family).config_class, overrides))
    model._remember_catalogue(ds)
    windows = model.windows(split.train)
    steps_per_epoch = math.ceil(len(windows) / (batch_size or model.config.train.batch_size))
    plan = model.validation_plan(split, windows, steps_per_epoch)
    return steps_per_epoch, plan.users, plan.every


@dataclass
class _Rates:
    steps_per_epoch: int
    batch_size: int  # what the fit trained with (memory planning may halve the configured one)
    setup_cpu: float  # model build and item init before the first step
    step_cpu: float  # the mean over the timed steps
    step_cpu_low: float  # the fastest of their 5-step stretches
    step_cpu_high: float  # the mean's 95 % upper confidence bound over those stretches (mean + 2 standard errors)
    valid_cpu_per_user: float
    test_cpu_per_user: float  # the final evaluation: every cut-off, coverage, popularity bias, per-user rows
    prior_cpu_per_user: float  # transitions=auto: weighing the prior, per validation user (0: no prior)
    wall_per_cpu: float  # wall seconds per CPU second while training here


def _standard_error(values: list[float]) -> float:
    """Standard error of the mean of `values` (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _probe(ds: Dataset, family: str, overrides: dict[str, Any], split: Split, valid_users: int) -> _Rates:
    """Train `PROBE_STEPS` real steps and validate `valid_users` users (at least one), timing each phase."""
    cls = family_class(family)
    users = max(1, min(valid_users, len(split.valid)))
    probe = {**overrides, f"{TRAIN}.epochs": 1, f"{TRAIN}.max_steps": PROBE_STEPS, f"{TRAIN}.patience": 0,
             f"{TRAIN}.eval_every": 1, f"{TRAIN}.cpu_budget_s": 0.0, f"{TRAIN}.checkpoint_dir": "",
             f"{TRAIN}.max_valid_users": users, "valid_share": 0.0}
    if capabilities_of(family, overrides).seed_ensemble:
        probe["members"] = 1  # one member's rates; `_estimate` counts the members
    marks: list[tuple[float, float, ProgressEvent]] = []
    progress = Progress(callback=lambda event: marks.append((*loop.clock(), event)))
    started = loop.clock()
    model = cls(build_config(cls.config_class, probe)).fit(ds, progress=progress, split=split)
    first = next(m for m in marks if m[2].step == 0 and m[2].total)
    steps = [m for m in marks if m[2].step > 0 and not m[2].metrics and m[2].loss is not None]
    valid = next((m for m in marks if m[2].metrics), None)
    timed = steps if len(steps) > 1 else [first, *steps]
    lo, hi = timed[0], timed[-1]
    n = max(1, hi[2].step - lo[2].step)
    step_cpu, step_wall = (hi[1] - lo[1]) / n, (hi[0] - lo[0]) / n
    stretches = [(b[1] - a[1]) / max(1, b[2].step - a[2].step) for a, b in itertools.pairwise(timed)]
    valid_cpu = (valid[1] - hi[1]) / users if valid is not None and len(split.valid) else 0.0
    # the transition prior's weighing (the validation users scored once, ranked 7 times), as its fit timed it
    prior_cpu = model.fit_report().get("transitions", {}).get("cpu_s", 0.0) / users if len(split.valid) else 0.0
    tested = min(len(split.test), PROBE_VALID_USERS)
    before = loop.clock()[1]
    evaluate(model, split.test, item_popularity=train_popularity(split), per_user=True, max_users=tested)
    test_cpu = (loop.clock()[1] - before) / max(1, tested)
    return _Rates(steps_per_epoch=first[2].total, batch_size=model.fit_report()["batch_size"],
                  setup_cpu=max(0.0, first[1] - started[1]),
                  step_cpu=max(step_cpu, 1e-6), step_cpu_low=max(min(stretches), 1e-6),
                  step_cpu_high=max(step_cpu + 2 * _standard_error(stretches), 1e-6),
                  valid_cpu_per_user=max(valid_cpu, 0.0), test_cpu_per_user=test_cpu, prior_cpu_per_user=max(prior_cpu, 0.0),
                  wall_per_cpu=_job_wall_per_cpu(max(step_wall, 1e-6) / max(step_cpu, 1e-6)))


def _job_wall_per_cpu(probed: float) -> float:
    """Wall seconds per CPU second the job will see. The probe's own ratio also counts waiting for the server's
    GIL behind other sessions' threads (the LLM warm-up made it 5x), which a job in its own process never does;
    the machine's share says what competing for cores costs: one thread among load + 1 runnable ones on `cores`.
    The smaller of the two."""
    share = max(1.0, (os.getloadavg()[0] + 1) / cores())
    return min(probed, share)

