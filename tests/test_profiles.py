"""Training profiles: each device class proposes its profile, a profile's settings fit every model, a run
under a CPU budget stops on the budget, and the expected time measured before a run is within a factor of
the time the run takes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.models import loop, profiles, sequential
from recsys_core.models.base import family_class
from recsys_core.models.profiles import DEMO, FULL, PROFILES, estimate_training, human_duration, profile_for
from recsys_core.models.settings import build_config, has_training_loop
from recsys_core.models.transitions import fit_prior
from recsys_core.progress import Progress
from recsys_core.threads import use_threads
from recsys_core.training.experiment import STOP_REASONS, families, make_split, run_experiment, under_trained
from recsys_core.workspace.registry import Workspace

SMALL = {"hidden": 16, "layers": 1, "max_len": 12, "batch_size": 16}


def _cycles(n_users: int = 240, n_items: int = 30, length: int = 12):
    """Each user walks the item cycle from a random start: a sequence model learns 'next = this + 1'."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(u, (start + t) % n_items, t) for t in range(length)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="cycles")


@pytest.fixture(scope="module")
def data():
    ds = _cycles()
    return ds, make_split(ds)


def test_a_cpu_proposes_the_demo_profile_and_a_gpu_the_full_one(monkeypatch):
    assert profiles.device_class("cpu") == "cpu" and profile_for("cpu").name == DEMO
    assert "CPU" in profiles.describe_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the hardware is the boundary we fake
    assert profiles.device_class("auto") == "gpu" and profile_for("auto").name == FULL
    assert profile_for("auto", DEMO).name == DEMO  # a chosen preset wins over the proposal


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_fits_every_model_and_budgets_only_those_with_a_training_loop(name):
    profile = PROFILES[name]
    for family in families():
        settings = profile.overrides(family)
        config_class = family_class(family).config_class
        build_config(config_class, settings)  # every name is a real setting of that model
        if has_training_loop(config_class):
            assert settings["train.cpu_budget_s"] == profile.budget_for(family) >= profile.cpu_budget_s > 0
        else:
            assert settings == {}
    demo = PROFILES[DEMO].overrides("bert4rec")  # the demo bounds steps as well as CPU time: load-proof
    assert demo["train.max_steps"] > 0 and demo["train.patience"] > 0
    blend = PROFILES[DEMO].overrides("blend")  # a blend's six models share its budget
    assert blend["train.cpu_budget_s"] >= 3 * demo["train.cpu_budget_s"] and blend["train.max_steps"] > 0


def test_a_run_with_a_tiny_cpu_budget_stops_on_the_budget(data):
    ds, split = data
    result = run_experiment(ds, "sasrec", {**SMALL, "epochs": 10_000, "patience": 0, "cpu_budget_s": 0.5},
                            split=split)
    report = result.model.fit_report()
    assert result.extra["stop_reason"] == STOP_REASONS["cpu_budget"]
    assert report["stopped"] == "cpu_budget" and report["epochs_run"] < 10_000
    assert report["cpu_seconds"] >= 0.5  # it stops after the epoch that passes the budget, not before


@pytest.fixture
def one_thread():
    """A job trains on one thread (recsys_core/threads.py); the estimate and the run here do too."""
    before = torch.get_num_threads()
    use_threads(1)
    yield
    use_threads(before)


def test_the_estimate_is_a_range_whose_upper_end_is_not_below_the_run(data, one_thread):
    ds, split = data
    settings = {**SMALL, "epochs": 6, "patience": 0, "seed": 3}
    estimate = estimate_training(ds, "sasrec", settings, split)
    assert estimate is not None and estimate.bound == "epochs" and not estimate.early_stopping
    assert estimate.steps_per_epoch == 15 and estimate.planned_steps == 90  # 240 windows in batches of 16
    assert estimate_training(ds, "sasrec", settings, split) is estimate  # measured once per settings
    assert estimate.lower_cpu_s <= estimate.upper_cpu_s and estimate.threads == 1
    small_batches = estimate_training(ds, "sasrec", {**settings, "batch_size": 4}, split)
    assert small_batches.steps_per_epoch == 60 > profiles.PROBE_STEPS  # an epoch, not the probe's few steps
    with loop.thread_cpu_clock():  # as the estimate counts: this thread, not other tests' leftover threads
        cpu = loop.cpu_time()
        run_experiment(ds, "sasrec", settings, split=split)
        cpu = loop.cpu_time() - cpu
    upper = estimate.upper_cpu_s - profiles.START_CPU_S  # this run starts no process
    # The cap ends this run, so it costs about the upper end: that end is a 95 % bound of the mean step cost, and a
    # run in this process pays fixed costs (config, model and SVD start, per-user rows: up to ~0.1 CPU s on this
    # 0.3 s run, seen 0.40-0.42 against 0.33-0.36) that a job's start-up allowance (START_CPU_S) covers.
    assert cpu <= 1.1 * upper + 0.15 and upper < 3 * cpu, (cpu, estimate)


def test_the_probe_times_the_transition_priors_weighing_only_where_the_model_weighs_one(data, one_thread, monkeypatch):
    ds, split = data
    settings = {**SMALL, "epochs": 1, "patience": 0}
    assert profiles._probe(ds, "sasrec", settings, split, 50).prior_cpu_per_user > 0  # transitions=auto, the default
    assert profiles._probe(ds, "sasrec", {**settings, "transitions": "off"}, split, 50).prior_cpu_per_user == 0
    # with refit=true the refit trains after the prior is weighed: the probe reads the weighing's own CPU seconds
    timed = []

    def weigh(*args):
        kept, report = fit_prior(*args)
        timed.append(report["cpu_s"])
        return kept, report

    monkeypatch.setattr(sequential, "fit_prior", weigh)
    refit = profiles._probe(ds, "sasrec", {**settings, "refit": True}, split, 50)
    assert refit.prior_cpu_per_user == timed[0] / min(50, len(split.valid)) > 0


def _rates(**kw):
    return profiles._Rates(**{"steps_per_epoch": 10, "batch_size": SMALL["batch_size"], "setup_cpu": 0.5, "step_cpu": 0.1, "step_cpu_low": 0.08,
                              "step_cpu_high": 0.12,
                              "valid_cpu_per_user": 0.001, "test_cpu_per_user": 0.002, "prior_cpu_per_user": 0.003,
                              "wall_per_cpu": 1.5, **kw})


def test_the_range_runs_from_the_earliest_early_stop_to_the_epoch_that_passes_the_budget(data, monkeypatch):
    """Step cost x the steps the stop rules allow: at least `patience` + 1 validations at the fastest measured rate,
    at most the CPU budget plus the epoch that passes it at the mean rate's upper confidence bound; never below what
    the run can take."""
    ds, split = data
    monkeypatch.setattr(profiles, "_probe", lambda *a: _rates())  # the measurement is the boundary we fake
    monkeypatch.setattr(profiles, "_plan", lambda *a: (10, 100, 1))
    settings = {**SMALL, "epochs": 10_000, "patience": 2, "cpu_budget_s": 30.0}
    estimate = estimate_training(ds, "sasrec", settings, split)
    fixed = profiles.START_CPU_S + 0.5 + 0.002 * len(split.test) + 0.003 * 100  # + weighing the prior (100 users)
    assert estimate.bound == "cpu_budget" and estimate.early_stopping
    assert estimate.upper_cpu_s == pytest.approx(fixed + 30.0 + 10 * 0.12 + 0.1)  # the budget + one epoch
    assert estimate.lower_cpu_s == pytest.approx(fixed + 3 * (10 * 0.08 + 0.1))  # first validation + patience 2
    assert estimate.upper_s == pytest.approx(1.5 * estimate.upper_cpu_s)
    assert estimate.planned_steps == 10 * math.ceil(30.0 / (10 * 0.1 + 0.1))  # what the progress bar's 100 % is
    assert estimate.text().endswith("at this load)") and " of CPU time " in estimate.text()
    narrow = dataclasses.replace(estimate, lower_cpu_s=50.0, upper_cpu_s=51.0, lower_s=50.0, upper_s=51.0)
    assert narrow.text() == "about 50 s of CPU time (about 50 s at this load)"  # said once, not "about about"
    capped = estimate_training(ds, "sasrec", {**settings, "max_steps": 50}, split)  # the cap comes first
    assert capped.bound == "max_steps" and capped.planned_steps == 50
    assert capped.upper_cpu_s == pytest.approx(fixed + 50 * 0.12 + 5 * 0.1)
    assert estimate_training(ds, "ease", {}, split) is None  # one pass, nothing to time
    # refit=true trains again to the best step: at least to the first validation, at most to the cap, within the budget
    refit = estimate_training(ds, "sasrec", {**settings, "max_steps": 50, "refit": True}, split)
    assert refit.lower_cpu_s == pytest.approx(capped.lower_cpu_s + 10 * 0.08)
    assert refit.upper_cpu_s == pytest.approx(capped.upper_cpu_s + 50 * 0.12)
    assert refit.refit_steps == 50 and capped.refit_steps == 0  # the page names the refit's steps
    budgeted = estimate_training(ds, "sasrec", {**settings, "refit": True}, split)
    assert budgeted.upper_cpu_s == estimate.upper_cpu_s  # the budget bounds both runs together
    assert budgeted.refit_steps == estimate.planned_steps  # a refit never makes more steps than the first run
    # members=2: two runs one after another, each on half the budget; every member encodes each test user
    pair = estimate_training(ds, "sasrec", {**settings, "members": 2}, split)
    two_fixed = fixed + 0.002 * len(split.test) + 0.003 * 100  # and each validation user the prior is weighed on
    assert pair.upper_cpu_s == pytest.approx(two_fixed + 2 * (15.0 + 10 * 0.12 + 0.1))
    assert pair.lower_cpu_s == pytest.approx(two_fixed + 2 * 3 * (10 * 0.08 + 0.1))
    assert pair.members == 2 and pair.planned_steps == 10 * math.ceil(15.0 / (10 * 0.1 + 0.1))  # each member's bar


def test_the_upper_rate_is_the_means_upper_confidence_bound():
    assert profiles._standard_error([0.1]) == 0.0
    assert profiles._standard_error([1.0, 3.0]) == pytest.approx(1.0)  # sd sqrt(2), over sqrt(2)


def test_the_first_progress_report_names_the_step_cap(data):
    """Issue 21: the first line read 'step 0 of 28,800' (every epoch) under a 2,700-step cap."""
    ds, split = data
    events = []
    result = run_experiment(ds, "sasrec", {**SMALL, "epochs": 1_000, "max_steps": 30, "patience": 0}, split=split,
                            progress=Progress(callback=events.append))
    assert result.extra["stopped"] == "max_steps" and result.extra["steps"] == 30
    assert {e.total for e in events if e.total and e.step <= 30} == {30}
    assert result.extra["max_steps"] == 30 and result.extra["epochs"] == 1_000  # the limits travel with the run


def test_human_durations():
    assert [human_duration(s) for s in (3, 42, 118, 3600 + 5 * 60, 7200)] == ["5 s", "40 s", "2 min",
                                                                               "1 h 5 min", "2 h"]


def _history(values: list[float], cpu_per_epoch: float = 10.0) -> list[dict]:
    return [{"epoch": i + 1, "cpu_seconds": cpu_per_epoch * (i + 1), "metrics": {"ndcg@10": v}}
            for i, v in enumerate(values)]


def test_a_run_a_limit_stopped_while_validation_rose_is_under_trained_with_the_cpu_it_needs():
    rising = _history([0.10, 0.15, 0.175])
    flag = under_trained("cpu_budget", rising, patience=5)
    # gains 0.05 then 0.025 (ratio 0.5): below 1 % of 0.175 after 4 more validations, then 5 for patience
    assert flag["under_trained"] and flag["needs_cpu_s"] == pytest.approx(30 + (4 + 5) * 10)
    assert under_trained("early_stop", rising, 5) == {"under_trained": False}  # converged
    assert under_trained("cpu_budget", _history([0.1, 0.2, 0.19, 0.18]), 5) == {"under_trained": False}  # had peaked
    assert under_trained("cpu_budget", _history([0.2, 0.1, 0.15]), 5) == {"under_trained": False}  # below its start
    assert under_trained("max_steps", _history([0.1, 0.12, 0.15]), 5)["needs_cpu_s"] == 60  # no slowdown yet: 2x
    assert under_trained("cpu_budget", _history([0.1]), 5) == {}  # one validation says nothing


def test_a_capped_run_still_rising_is_recorded_as_under_trained(data, tmp_path):
    ds, split = data
    ws = Workspace(tmp_path / "ws")
    settings = {**SMALL, "epochs": 1_000, "max_steps": 45, "patience": 5, "eval_every": 1}  # 3 epochs of 15 steps
    result = run_experiment(ds, "sasrec", settings, split=split, workspace=ws, dataset_name="cycles")
    curve = [h["metrics"]["ndcg@10"] for h in result.model.training_history()]
    assert curve == sorted(curve) and len(curve) == 3  # still rising when the cap stopped it
    assert result.extra["under_trained"] and result.extra["needs_cpu_s"] > result.model.fit_report()["cpu_seconds"]
    recorded = ws.list_runs(dataset="cycles")[0].metrics["run"]
    assert recorded["under_trained"] and recorded["stop_reason"] == STOP_REASONS["max_steps"]
    assert recorded["needs_cpu_s"] == result.extra["needs_cpu_s"] and recorded["needs_method"]


def test_the_wall_estimate_does_not_count_the_servers_gil_but_does_count_busy_cores(monkeypatch) -> None:
    """The probe waits behind the server's other threads (5x slower by the wall), a job in its own process does not;
    competing for the cores it does: one thread among load + 1 runnable ones."""
    from recsys_core.models import profiles

    monkeypatch.setattr(profiles, "cores", lambda: 2)
    monkeypatch.setattr(profiles.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert profiles._job_wall_per_cpu(5.0) == 1.0  # an idle machine: a core of its own
    monkeypatch.setattr(profiles.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert profiles._job_wall_per_cpu(5.0) == 3.0 and profiles._job_wall_per_cpu(1.2) == 1.2
