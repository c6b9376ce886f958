"""Training profiles: each device class proposes its profile, a profile's settings fit every model, a run
under a CPU budget stops on the budget, and the expected time measured before a run is within a factor of
the time the run takes."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.data.dataset import build_dataset
from recsys_core.models import profiles
from recsys_core.models.base import family_class
from recsys_core.models.profiles import DEMO, FULL, PROFILES, estimate_training, human_duration, profile_for
from recsys_core.models.settings import build_config, has_training_loop
from recsys_core.training.experiment import STOP_REASONS, families, make_split, run_experiment

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
            assert settings["train.cpu_budget_s"] == profile.cpu_budget_s > 0
        else:
            assert settings == {}
    demo = PROFILES[DEMO].overrides("bert4rec")  # the demo bounds steps as well as CPU time: load-proof
    assert demo["train.max_steps"] > 0 and demo["train.patience"] > 0


def test_a_run_with_a_tiny_cpu_budget_stops_on_the_budget(data):
    ds, split = data
    result = run_experiment(ds, "sasrec", {**SMALL, "epochs": 10_000, "patience": 0, "cpu_budget_s": 0.5},
                            split=split)
    report = result.model.fit_report()
    assert result.extra["stop_reason"] == STOP_REASONS["cpu_budget"]
    assert report["stopped"] == "cpu_budget" and report["epochs_run"] < 10_000
    assert report["cpu_seconds"] >= 0.5  # it stops after the epoch that passes the budget, not before


def test_the_expected_time_is_within_a_factor_of_the_measured_time(data):
    ds, split = data
    settings = {**SMALL, "epochs": 6, "patience": 0, "seed": 3}
    estimate = estimate_training(ds, "sasrec", settings, split)
    assert estimate is not None and estimate.bound == "epochs" and not estimate.early_stopping
    assert estimate.steps_per_epoch == 15  # 240 windows in batches of 16
    assert estimate_training(ds, "sasrec", settings, split) is estimate  # measured once per settings
    wall, cpu = time.perf_counter(), time.process_time()
    run_experiment(ds, "sasrec", settings, split=split)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    predicted = estimate.upper_cpu_s - profiles.START_CPU_S  # this run starts no process
    assert cpu / 3 < predicted < cpu * 3, (predicted, cpu, wall)


def test_the_estimate_is_bounded_by_the_budget_and_says_so_in_human_units(data):
    ds, split = data
    settings = {**SMALL, "epochs": 10_000, "patience": 5, "cpu_budget_s": 2.0}
    estimate = estimate_training(ds, "sasrec", settings, split)
    assert estimate.bound == "cpu_budget" and estimate.early_stopping
    epoch_cpu = estimate.steps_per_epoch * estimate.step_cpu_s + estimate.validation_cpu_s
    assert estimate.upper_cpu_s < profiles.START_CPU_S + 2.0 + 2 * epoch_cpu + 5.0  # not 10,000 epochs
    assert estimate.text().startswith("at most ") and estimate.text().endswith("; usually less (early stopping)")
    assert estimate_training(ds, "ease", {}, split) is None  # one pass, nothing to time


def test_human_durations():
    assert [human_duration(s) for s in (3, 42, 118, 3600 + 5 * 60, 7200)] == ["5 s", "40 s", "2 min",
                                                                               "1 h 5 min", "2 h"]
