"""The tuner (training/tune.py): search spaces name real settings inside their bounds; a 3-trial study is stored
in the workspace, resumes, and its winner's runs record it; the search keeps to its CPU budget; the trials never
read the test split (poisoned test targets leave every trial's value unchanged); a search, in process or as a
workspace job in its own process, stops within seconds of Cancel."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import optuna
import pytest

from recsys_core.data.splits import EvalSet, leave_one_out
from recsys_core.errors import ConfigError
from recsys_core.models import loop
from recsys_core.models.base import FAMILIES, family_class
from recsys_core.models.settings import (
    Settings,
    build_config,
    flatten_config,
    search,
    search_choices,
    search_space,
    setting,
)
from recsys_core.progress import Progress
from recsys_core.training.experiment import families, make_model
from recsys_core.training.tune import (
    BUDGET_CUT,
    DEFAULTS,
    PAIRED_USERS,
    PER_USER,
    RESUMES,
    TUNE_KIND,
    _best,
    job_params,
    paired_sample,
    queued_leader,
    read_study,
    requeue_cut_leader,
    studies_path,
    study_name,
    trials_table,
    tunable_families,
    tune,
)
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace
from tests.test_jobs import _sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 16, "max_len": 12, "epochs": 4, "patience": 100}
ENDLESS = {"hidden": 16, "max_len": 12, "epochs": 100_000, "patience": 100_000}
BUDGET_SLACK_S = 1.0  # the stated overrun: one validation pass and a few steps of the trial running at the end
CANCEL_S = 3.0
JOB_START_S = 120  # a job's process imports torch and optuna first: generous on a busy 2-core box


def _cycles(n_users: int = 60, n_items: int = 25, length: int = 10):
    return _sequences(n_users, n_items, length)  # users walking a cycle of items, one step a time unit


@pytest.fixture(scope="module")
def ds():
    return _cycles()


def test_every_declared_search_space_names_real_settings_with_values_inside_their_bounds():
    families()  # registers every family
    assert {"sasrec", "bert4rec", "ease", "itemknn"} <= set(tunable_families(sorted(FAMILIES)))
    for cls in FAMILIES.values():
        for name, dim in search_space(cls.config_class).items():
            for value in dim.values():  # each end of a range and every choice builds a config on its own
                build_config(cls.config_class, {name: value})
            default = flatten_config(cls.config_class())[name]  # the defaults compete as the first trial
            assert default in dim.choices if dim.choices is not None else dim.low <= default <= dim.high, name


@dataclass
class _BadSpace(Settings):
    width: int = setting(8, "a width", ge=1, le=64)
    search_space: ClassVar[dict] = {}


@pytest.mark.parametrize("space, words", [({"widht": search(1, 8)}, "not a setting"),
                                          ({"width": search(1, 128)}, "not allowed"),
                                          ({"width": search_choices(0, 8)}, "not allowed"),
                                          ({"width": search(8, 8)}, "empty")])
def test_a_space_naming_a_missing_setting_or_leaving_its_bounds_is_refused(space, words):
    bad = type("Bad", (_BadSpace,), {"search_space": space})
    with pytest.raises(ConfigError, match=words):
        search_space(bad)


def test_a_three_trial_study_is_stored_resumed_and_recorded_on_the_winners_runs(ds, tmp_path):
    ws = Workspace(tmp_path / "ws")
    storage = studies_path(ws.root)
    first = tune(ds, "sasrec", budget_cpu_s=120, storage=storage, dataset_name="cycle", overrides=TINY,
                 max_trials=3, final_seeds=(0, 1), workspace=ws)
    assert first.stopped == "trials" and len(first.trials) == 3
    assert storage.is_file() and storage.parent == ws.root
    defaults = family_class("sasrec").config_class()
    assert first.trials[0]["params"]["train.lr"] == defaults.train.lr  # the defaults compete first
    assert "hidden" not in first.trials[0]["params"]  # a fixed setting is not searched
    stored = read_study(storage, study_name("cycle", "sasrec"))
    assert [t["value"] for t in stored["trials"]] == [t["value"] for t in first.trials]
    top, best = max(t["value"] for t in first.trials if t["value"] is not None), stored["best"]
    # the highest trial wins, or the defaults' trial does when that gain is within the validation's noise
    assert best["value"] == top or (best["defaults"] and not best["vs_defaults"]["beyond_noise"]
                                    and best["vs_defaults"]["gain"] == pytest.approx(top - best["value"], abs=1e-4))
    # the winner: trained once per seed, tested, and each run carries the study
    assert first.final["ndcg@10"]["seeds"] == [0, 1] and len(first.run_ids) == 2
    for run_id in first.run_ids:
        run = ws.get_run(run_id)
        assert run.metrics["tune"]["study"] == first.study
        assert len(run.metrics["tune"]["trials"]) == 3 and run.metrics["tune"]["budget_cpu_s"] == 120
        assert set(run.metrics["tune"]["space"]) == set(first.space)
        assert run.config["train"]["lr"] == first.best["params"]["train.lr"]
    # a restart: the same call on the same workspace extends the stored study
    again = tune(ds, "sasrec", budget_cpu_s=120, storage=storage, dataset_name="cycle", overrides=TINY,
                 max_trials=2, final_seeds=())
    assert len(again.trials) == 5 and again.trials[:3] == stored["trials"]
    assert read_study(storage, study_name("cycle", "sasrec"))["budgets"] == [120, 120]


def test_trials_search_single_encoders_and_the_winner_trains_the_members_and_prior_asked_for(ds, tmp_path, monkeypatch):
    """members=2 fixed: every trial trains one model (one validation curve for the pruner to read), the winner's
    final run trains two, each on a trial's CPU budget. The transition prior's kept table counts the validation
    items a trial is scored on: trials go without it, the final runs add it (its default)."""
    import recsys_core.training.tune as tuning

    built = []

    def spy(family, values):
        model = make_model(family, values)
        built.append((model.config.members, model.config.train.cpu_budget_s, model.config.transitions))
        return model

    monkeypatch.setattr(tuning, "make_model", spy)
    ws = Workspace(tmp_path / "ws")
    result = tune(ds, "sasrec", budget_cpu_s=120, storage=studies_path(ws.root), dataset_name="cycle",
                  overrides={**TINY, "members": 2}, trial_cpu_s=30, max_trials=2, final_seeds=(0,), workspace=ws)
    trials = [b for b in built if b[1] and b[1] <= 30]
    assert len(trials) == 2 and all(members == 1 and prior == "off" for members, _, prior in trials)
    run = ws.get_run(result.run_ids[0])
    assert run.config["members"] == 2 and run.config["train"]["cpu_budget_s"] == 60
    assert run.config["transitions"] == "auto" and "weight" in run.metrics["run"]["transitions"]
    assert run.metrics["run"]["members"]["trained"] == 2


def _finished(number: int, per_user: np.ndarray, defaults: bool = False) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(params={"x": float(number)}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 100)}, value=float(per_user.mean()),
        user_attrs={PER_USER: per_user.tolist(), **({DEFAULTS: True} if defaults else {})})
    trial.number = number
    return trial


def test_a_trial_ahead_of_the_defaults_only_by_noise_does_not_win_one_ahead_beyond_it_does():
    """Issue 23: the demo's winner (validation 0.1355 vs the defaults' 0.1311 over 4,333 users) tested below the
    defaults; the gap was within the validation's noise. The defaults now stay unless the paired gain clears
    two standard errors."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 4000)
    lucky = base + rng.normal(0.002, 0.3, 4000)  # +0.002 on average, but 0.3 of per-user noise: 2 SE ~ 0.0095
    better = base + rng.normal(0.03, 0.3, 4000)  # +0.03: beyond the noise
    defaults, noisy, real = _finished(0, base, defaults=True), _finished(1, lucky), _finished(2, better)
    assert noisy.value > defaults.value
    kept = _best([defaults, noisy])
    assert kept["number"] == 0 and kept["defaults"] and kept["vs_defaults"]["trial"] == 1
    assert not kept["vs_defaults"]["beyond_noise"] and kept["vs_defaults"]["users"] == 4000
    assert 0.008 < kept["vs_defaults"]["two_se"] < 0.011
    won = _best([defaults, noisy, real])
    assert won["number"] == 2 and not won["defaults"] and won["vs_defaults"]["beyond_noise"]
    assert won["vs_defaults"]["gain"] == pytest.approx(real.value - defaults.value, abs=1e-5)
    # a study stored before per-user values were kept: the highest value wins, as before
    old = _finished(1, lucky)
    old.user_attrs.pop(PER_USER)
    assert _best([defaults, old])["number"] == 1 and _best([defaults, old])["vs_defaults"] is None


def test_a_trial_keeps_at_most_a_fixed_sample_of_users_the_same_in_every_trial():
    values = np.arange(25_000) / 25_000
    kept = paired_sample(values)
    assert len(kept) == PAIRED_USERS and kept == paired_sample(values) and kept == sorted(kept)
    assert paired_sample(values[:50]) == pytest.approx(values[:50].tolist(), abs=1e-5)  # few users: all, in order


def test_the_search_keeps_to_its_cpu_budget_within_the_stated_slack(ds, tmp_path):
    cpu0 = loop.cpu_time()
    # 4 s: opening the study costs CPU too, and in a busy test process (other tests' threads count) 2 s was once
    # spent before the first trial started, which then stayed queued
    result = tune(ds, "sasrec", budget_cpu_s=4.0, storage=tmp_path / "s.db", overrides=ENDLESS, trial_cpu_s=100,
                  final_seeds=())
    spent = loop.cpu_time() - cpu0
    assert result.stopped == "budget"
    assert spent <= 4.0 + BUDGET_SLACK_S, spent
    cut = [t for t in result.trials if t["stopped"] == "out of the search's CPU budget"]
    assert len(cut) == 1 and cut[0]["state"] == "pruned", result.trials
    # with no finished trial, a cut trial that validated once is ahead: it is queued to run again, in full
    assert all(t["state"] == "waiting" and t["stopped"].startswith(f"queued: trial {cut[0]['number']} again")
               for t in result.trials if t["number"] > cut[0]["number"])


def _cut(number: int, curve: dict[int, float]) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(params={"x": float(number)}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 100)}, state=optuna.trial.TrialState.PRUNED,
        intermediate_values=curve, user_attrs={"stopped": BUDGET_CUT, "cpu_s": 103.0})
    return trial


def test_a_trial_the_budget_cut_while_ahead_is_queued_to_run_first_on_resume_once():
    """Issue 23: on the demo the budget stopped the study's best trial so far (0.1376 after 103 CPU s, still
    rising; it reached 0.1422 when run in full) and the search then ignored it."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 100)}, value=0.1355))
    study.add_trial(_cut(1, {10: 0.120, 500: 0.1376}))
    assert requeue_cut_leader(study) == {"trial": 1, "value": 0.1376, "cpu_s": 103.0}
    assert requeue_cut_leader(study) is not None  # asked again (another reader, a second call): still one queued
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs[RESUMES] == 1
    assert waiting[0].system_attrs["fixed_params"] == {"x": 1.0}  # the cut trial's settings, as Optuna queues them
    table = trials_table(study.trials)
    assert table[-1]["stopped"].startswith("queued: trial 1 again, in full")
    assert queued_leader(study.trials) == {"trial": 1, "value": 0.1376, "cpu_s": 103.0}
    behind = optuna.create_study(direction="maximize")
    behind.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 100)}, value=0.14))
    behind.add_trial(_cut(1, {500: 0.1376}))
    assert requeue_cut_leader(behind) is None and len(behind.trials) == 2  # behind the best: its settings lost


def test_a_search_whose_budget_is_spent_before_its_first_trial_says_so(ds, tmp_path):
    result = tune(ds, "sasrec", budget_cpu_s=0.001, storage=tmp_path / "s.db", overrides=ENDLESS, final_seeds=())
    assert result.stopped == "budget" and not result.best
    (queued,) = result.trials  # the defaults, queued first, never started
    assert queued["state"] == "waiting" and queued["stopped"].startswith("not started: the budget was spent")


def test_trials_never_read_the_test_split(ds, tmp_path):
    """Poisoned test targets (random items) must leave every trial's validation value as it was."""
    split = leave_one_out(ds)
    rng = np.random.default_rng(1)
    poisoned = dataclasses.replace(split, test=EvalSet(split.test.users, split.test.histories,
                                                       [rng.integers(0, ds.n_items, 1) for _ in split.test.users]))
    values = []
    for i, s in enumerate((split, poisoned)):
        # a huge per-trial cap puts Hyperband's first rung out of reach: no CPU-time-dependent pruning
        result = tune(ds, "sasrec", budget_cpu_s=300, storage=tmp_path / f"s{i}.db", overrides=TINY, split=s,
                      trial_cpu_s=10_000, max_trials=3, final_seeds=())
        values.append([t["value"] for t in result.trials])
    assert values[0] == values[1] and all(v is not None for v in values[0])


def test_a_cancelled_search_stops_within_seconds(ds, tmp_path):
    progress = Progress()
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", tune(
        ds, "sasrec", budget_cpu_s=600, storage=tmp_path / "s.db", overrides=ENDLESS, progress=progress)))
    worker.start()
    time.sleep(1.5)
    progress.cancel()
    t0 = time.monotonic()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - t0 < CANCEL_S
    assert out["r"].stopped == "cancelled" and out["r"].run_ids == []


def test_a_tune_job_runs_in_its_own_process_shows_its_trials_and_cancels_within_seconds(ds, tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.save_dataset(ds, "cycle")
    store = JobStore(ws)
    job_id = store.create("cycle", "sasrec", kind=TUNE_KIND,
                          params=job_params(600, ENDLESS, trial_cpu_s=2, final_seeds=()))
    process = subprocess.Popen([sys.executable, "-m", "recsys_core.training.worker", str(ws.root), str(job_id)],
                               stdin=subprocess.DEVNULL)
    try:
        other_tab = JobStore(Workspace(ws.root))
        deadline = time.monotonic() + JOB_START_S
        while len(read_study(studies_path(ws.root), study_name("cycle", "sasrec")).get("trials", [])) < 1:
            assert time.monotonic() < deadline and process.poll() is None, other_tab.get(job_id).error
            time.sleep(0.2)
        assert other_tab.get(job_id).status == "running"
        other_tab.request_cancel(job_id)
        t0 = time.monotonic()
        while other_tab.get(job_id).active:
            # + the reporter's poll, and a niced process's share of a loaded 2-core box
            assert time.monotonic() - t0 < CANCEL_S + 5, "the job did not stop"
            time.sleep(0.05)
        assert other_tab.get(job_id).status == "cancelled"
        assert other_tab.get(job_id).result["stopped"] == "cancelled"
    finally:
        process.kill() if process.poll() is None else None
        process.wait(10)


def test_a_trial_whose_settings_are_refused_fails_alone_with_its_reason(ds, tmp_path, monkeypatch):
    """Heads of 3 or 5 divide no hidden width of 16: each trial fails with the reason, the search goes on."""
    monkeypatch.setattr(family_class("sasrec").config_class, "search_space", {"heads": search_choices(3, 5)})
    result = tune(ds, "sasrec", budget_cpu_s=60, storage=tmp_path / "s.db", overrides=TINY, max_trials=2,
                  final_seeds=())
    assert [t["state"] for t in result.trials] == ["fail", "fail"]
    assert all("not a multiple of heads" in t["stopped"] for t in result.trials)
    assert result.best == {} and result.final == {}


def test_a_trial_left_running_by_a_killed_search_is_marked_failed_when_the_study_resumes(ds, tmp_path, monkeypatch):
    import recsys_core.training.tune as tuning

    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    storage = tmp_path / "s.db"
    first = tune(ds, "ease", budget_cpu_s=60, storage=storage, dataset_name="cycle", max_trials=1, final_seeds=())
    study = optuna.load_study(study_name=first.study, storage=tuning._storage(storage))
    trial = study.ask()  # a trial whose process then died: its heartbeat stops
    tuning._storage(storage).record_heartbeat(trial._trial_id)
    assert read_study(storage, first.study)["trials"][-1]["state"] == "running"
    time.sleep(2.5)
    again = tune(ds, "ease", budget_cpu_s=60, storage=storage, dataset_name="cycle", max_trials=1, final_seeds=())
    assert [t["state"] for t in again.trials] == ["complete", "fail", "complete"]


def test_a_reader_never_stamps_the_schema_version_the_search_is_about_to_stamp(tmp_path):
    """Between creating the tables and stamping alembic's version row, the search's storage is half made; a page
    polling read_study then stamped it first and the job died on alembic's UNIQUE constraint (1 run in ~6 of
    test_a_tune_job_runs_in_its_own_process... failed so). A reader now waits for the stamped schema."""
    import sqlalchemy
    from optuna.storages._rdb import models

    path = tmp_path / "studies.db"
    models.BaseModel.metadata.create_all(sqlalchemy.create_engine(f"sqlite:///{path}"))  # the search's first step
    assert read_study(path, "cycle:sasrec:leave_one_out") == {}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone()[0] == 0
    ds = _cycles(20, 10, 5)
    tune(ds, "ease", budget_cpu_s=30, storage=path, dataset_name="cycle", max_trials=1, final_seeds=())  # the search
    assert len(read_study(path, study_name("cycle", "ease"))["trials"]) == 1


def test_a_reader_never_creates_the_study_tables_so_it_cannot_race_the_search_creating_them(tmp_path):
    """A page polled read_study while a job created studies.db: both created the tables, and the job died on
    alembic's UNIQUE constraint. A reader now sees no study until the search has made them."""
    path = tmp_path / "studies.db"
    sqlite3.connect(path).close()  # the file exists, its tables not yet
    assert read_study(path, "cycle:sasrec:leave_one_out") == {}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
