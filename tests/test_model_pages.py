"""Train and Compare pages with AppTest on the demo data: train a model from the form and see it
recorded; the leaderboard ranks runs and breaks them down by user segment."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME
from recsys_core.models.bert4rec import BERT4RecConfig
from recsys_core.models.blend import BlendConfig
from recsys_core.models.profiles import profile_for
from recsys_core.training.experiment import config_fields, run_experiment
from recsys_core.workspace.registry import Workspace


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


ESTIMATE_KEY = "train_estimate"


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.error])


def test_train_page_trains_from_the_form_and_records_the_run(ws_root: Path) -> None:
    at = open_app("views/train.py")
    assert "No runs on this dataset yet" in _texts(at)
    at.selectbox(key="train_family").set_value("ease")
    at.button(key="train_start").click().run()
    job = at.session_state["train_job"]
    job.join(300)  # the job's process imports torch first: minutes on a 2-core box at load 25
    assert job.state == "finished", job.error
    at.run()
    assert not at.exception, at.exception
    runs = Workspace(ws_root).list_runs(dataset=DEMO_NAME)
    assert [r.model for r in runs] == ["ease"]
    assert f"NDCG@10 {runs[0].metrics['ndcg@10']:.4f}" in _texts(at)
    table = at.dataframe[0].value
    assert table["model"].tolist() == ["ease"]


def test_train_form_lists_every_model_family_with_its_settings(ws_root: Path) -> None:
    at = open_app("views/train.py")
    options = at.selectbox(key="train_family").options
    for family in ("bert4rec", "sasrec", "ease", "itemknn", "popularity"):
        assert any(family in o.lower().replace("-", "").replace("+", "") or family in o for o in options), family
    at.selectbox(key="train_family").set_value("bert4rec").run()
    preset = profile_for().name
    max_len = at.number_input(key=f"train_cfg_{preset}_bert4rec_max_len")
    assert max_len.value == BERT4RecConfig().max_len and max_len.help == "Most recent items of a history the model reads."
    lr = at.number_input(key=f"train_cfg_{preset}_bert4rec_train_lr")  # the loop's settings, once, under Training
    assert lr.value == BERT4RecConfig().train.lr and "learning rate" in lr.help


def _widget_keys(block) -> set[str]:
    return {w.key for kind in ("selectbox", "number_input", "text_input", "checkbox", "radio")
            for w in getattr(block, kind) if w.key}


def test_train_page_puts_basic_settings_first_and_every_other_field_under_advanced(ws_root: Path) -> None:
    """Model, quality/speed preset (the device's proposal) and time budget at the top; every hyperparameter
    in the Advanced expander with its help; the expected time, measured on this machine, before starting."""
    at = open_app("views/train.py")
    assert at.selectbox(key="train_family").value == "bert4rec"  # the first model: its time is being measured
    proposed = profile_for()
    assert at.radio(key="train_preset").value == proposed.name
    assert "Training device:" in _texts(at) and proposed.label in _texts(at)
    budget = at.number_input(key=f"train_budget_{proposed.name}_bert4rec")
    assert budget.value * 60 == proposed.cpu_budget_s and "CPU time" in budget.help
    advanced = next(e for e in at.expander if e.label == "Advanced settings")
    inside = _widget_keys(advanced)
    prefix = f"train_cfg_{proposed.name}_bert4rec_"
    expected = {prefix + name.replace(".", "_") for name, _ in config_fields("bert4rec") if name != "train.cpu_budget_s"}
    assert expected | {"train_split"} <= inside
    assert not {"train_family", "train_preset", budget.key} & inside  # the basic fields stay outside
    for kind in ("number_input", "text_input", "checkbox", "selectbox"):
        for widget in getattr(advanced, kind):
            assert widget.help and "\n" not in widget.help, widget.key  # one line of help each
    # A setting with declared choices is a pick among exactly those, starting from the default.
    block = at.selectbox(key=prefix + "block")
    assert block.options == ["bert", "pre_norm", "ligr"] and block.value == BERT4RecConfig().block
    prior = at.selectbox(key=prefix + "transitions")
    assert prior.options == ["off", "auto"] and prior.value == "auto" and "weighted on validation" in prior.help
    # The profile's settings are what the Advanced fields start from (and what a job gets).
    patience = at.number_input(key=prefix + "train_patience")
    assert patience.value == proposed.overrides("bert4rec").get("train.patience", BERT4RecConfig().train.patience)
    at.session_state[ESTIMATE_KEY].join(600)  # the step-rate measurement runs beside the page
    at.run()
    assert not at.exception, at.exception
    shown = _texts(at)
    assert re.search(r"Expected time: (about )?\d+ (s|min|h)( to \d+ (s|min|h))? of CPU time", shown), shown
    assert "From early stopping at its earliest to " in shown  # the range's two ends, in words
    at.number_input(key=prefix + "members").set_value(2).run()  # a seed ensemble: the estimate counts both
    at.session_state[ESTIMATE_KEY].join(600)
    at.run()
    assert "2 members train one after another, each on an equal share of any time budget. Each: from early " \
           "stopping at its earliest to " in _texts(at)


def test_train_page_proposes_a_blend_its_own_budget_and_adds_up_its_parts_expected_times(ws_root: Path) -> None:
    at = open_app("views/train.py")
    at.selectbox(key="train_family").set_value("blend").run()
    proposed = profile_for()
    budget = at.number_input(key=f"train_budget_{proposed.name}_blend")
    assert budget.value * 60 == proposed.budget_for("blend") > proposed.cpu_budget_s  # six members share it
    parts = at.text_input(key=f"train_cfg_{proposed.name}_blend_parts")
    assert parts.value == BlendConfig().parts and "'+' between them" in parts.help
    parts.set_value("bert4rec@hidden=16;layers=1 + sasrec@hidden=16;layers=1;members=2").run()
    at.session_state[ESTIMATE_KEY].join(600)
    at.run()
    assert not at.exception, at.exception
    shown = _texts(at)
    assert "The parts train one after another" in shown, shown
    assert re.search(r"part 1 \(bert4rec, 1 member\): (about )?\d+ (s|min)", shown), shown
    assert re.search(r"part 2 \(sasrec, 2 members\): (about )?\d+ (s|min)", shown), shown
    parts.set_value("bert4rec + ease").run()  # a part it cannot hold: said by name, nothing measured
    assert "Expected time: unknown" in _texts(at) and "'ease' cannot be part of a blend" in _texts(at)


def test_train_page_says_a_one_pass_model_has_no_epochs(ws_root: Path) -> None:
    at = open_app("views/train.py")
    at.selectbox(key="train_family").set_value("ease").run()
    assert "Expected time: one pass over the data" in _texts(at)
    assert not [w for w in at.number_input if w.key and w.key.startswith("train_budget_")]


def test_compare_page_ranks_runs_and_breaks_them_down(ws_root: Path) -> None:
    at = open_app("views/compare.py")
    assert "No evaluated runs" in _texts(at)
    ws = Workspace(ws_root)
    from recsys_core.data.demo import load_demo

    ds = load_demo()
    scores = {}
    for family in ("popularity", "ease"):
        scores[family] = run_experiment(ds, family, workspace=ws, dataset_name=DEMO_NAME).metrics["ndcg@10"]
    start = time.perf_counter()
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["model"].tolist() == sorted(scores, key=scores.get, reverse=True)
    assert table["NDCG@10"].tolist() == pytest.approx(sorted(scores.values(), reverse=True))
    # bar chart + two segment charts (history length, target popularity)
    assert len(at.get("plotly_chart")) == 3, time.perf_counter() - start


def test_a_cancelled_run_is_never_served_as_the_best_model(ws_root: Path) -> None:
    ws = Workspace(ws_root)
    ws.ensure_demo()
    ds = ws.load_dataset(DEMO_NAME)
    finished = run_experiment(ds, "popularity", workspace=ws, dataset_name=DEMO_NAME)
    cancelled = run_experiment(ds, "ease", workspace=ws, dataset_name=DEMO_NAME)
    ws.update_run(cancelled.run_id, status="cancelled", metrics={**cancelled.metrics, "ndcg@10": 0.99})
    at = open_app("views/recommend.py")
    assert not at.exception, at.exception
    assert f"run #{finished.run_id} (popularity, the best NDCG@10 on this dataset)" in _texts(at).replace("\\", "")


def test_a_fine_tuning_text_tower_job_shows_its_curves_and_a_zero_shot_one_does_not(ws_root: Path) -> None:
    """Capabilities come from the job's own settings: fine-tuning has a loss and validation curve."""
    import os

    from recsys_core.workspace.jobs import JobStore

    open_app()  # the demo lands in the workspace
    store = JobStore(Workspace(ws_root))
    curve = {"loss": [[10, 2.5], [20, 2.1]], "val": [[1, {"ndcg@10": 0.05}, 12.0]]}
    ids = {}
    for mode in ("fine_tune", "zero_shot"):
        ids[mode] = store.create(DEMO_NAME, "text_tower", {"mode": mode})
        store.mark_running(ids[mode], os.getpid())  # alive: this process
        store.report(ids[mode], fraction=0.5, step=20, total=40, curve=curve)
    at = open_app("views/train.py")
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert "Training loss" in specs and "Validation NDCG@10" in specs
    assert len(at.get("plotly_chart")) == 2, keys  # both from the fine-tuning job, none from the zero-shot one
    for job_id in ids.values():
        store.finish(job_id, "cancelled")


UNDER_TRAINED = {"stop_reason": "CPU budget", "stopped": "cpu_budget", "steps": 1152, "best_epoch": 8,
                 "under_trained": True, "needs_cpu_s": 540.0, "needs_method": "the last validation gains ..."}


def test_the_result_card_names_the_stop_reason_and_an_under_trained_run(ws_root: Path) -> None:
    from recsys_core.workspace.jobs import JobStore

    open_app()  # the demo lands in the workspace
    store = JobStore(Workspace(ws_root))
    job_id = store.create(DEMO_NAME, "sasrec", {})
    metrics = {"ndcg@10": 0.1111, "hr@10": 0.2222}
    store.finish(job_id, "finished", run_id=7, result={"run_id": 7, "model": "sasrec", "status": "finished",
                                                        "train_s": 400.0, "cpu_s": 250.0, "device": "cpu",
                                                        "artifact_dir": "", "metrics": metrics, **UNDER_TRAINED})
    at = open_app("views/train.py")
    at.session_state["train_watched"] = {job_id: False}
    at.run()
    assert not at.exception, at.exception
    shown = _texts(at) + "\n".join(str(w.value) for w in at.warning)
    assert "stopped: CPU budget after 1,152 steps" in shown
    assert "under-trained" in shown and "9 min of training CPU time" in shown


def test_how_a_run_stopped_says_whether_it_was_refit_and_what_its_transitions_added() -> None:
    from views.ui.model_state import run_ending

    ended = {"stop_reason": "early stopping", "steps": 1716}
    assert run_ending({**ended, "refit": {"done": True, "steps": 1001, "sequences": 4582}}) == \
        "early stopping after 1,716 steps · refit on training + validation items: 1,001 steps"
    why = "the CPU budget leaves 3 s and the refit needs about 40 s"
    assert run_ending({**ended, "refit": {"done": False, "reason": why}}).endswith(f" · not refit: {why}")
    assert run_ending(ended) == "early stopping after 1,716 steps"  # refit off: nothing said
    weighted = {"weight": 0.1, "valid_ndcg@10": {"0.0": 0.14, "0.1": 0.15}, "counted": "training sequences"}
    assert run_ending({**ended, "transitions": weighted}).endswith(" · transitions added at weight 0.1, chosen on validation")
    assert run_ending({**ended, "transitions": {**weighted, "weight": 0.0}}).endswith(
        " · transitions not added: none of their weights beat the model alone")
    assert run_ending({**ended, "transitions": {"weight": 0.0, "reason": "no validation users to weigh it on"}}).endswith(
        " · transitions not added: no validation users to weigh it on")


def test_compare_marks_an_under_trained_run_with_the_cpu_it_needs(ws_root: Path) -> None:
    ws = Workspace(ws_root)
    ws.ensure_demo()
    ds = ws.load_dataset(DEMO_NAME)
    run = run_experiment(ds, "popularity", workspace=ws, dataset_name=DEMO_NAME)
    ws.update_run(run.run_id, metrics={**run.metrics, "run": UNDER_TRAINED})  # as a budget-stopped run records it
    at = open_app("views/compare.py")
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["how it stopped"].tolist() == ["CPU budget after 1,152 steps · under-trained (needs about 9 min CPU)"]
    warning = "\n".join(str(w.value) for w in at.warning)
    assert f"#{run.run_id} popularity" in warning and "Under-trained" in warning


def test_how_a_run_stopped_names_its_members_and_a_cancelled_ensemble() -> None:
    from views.ui.model_state import run_ending

    ended = {"stop_reason": "step budget", "steps": 2700}
    each = [{"stopped": "max_steps", "steps": 2700}, {"stopped": "cpu_budget", "steps": 2213},
            {"stopped": "early_stop", "steps": 1500}]
    members = {"requested": 3, "trained": 3, "each": each}
    assert run_ending({**ended, "members": members}) == (
        "mean of 3 members: step budget after 2,700 steps; CPU budget after 2,213 steps; "
        "converged (validation stopped improving) after 1,500 steps")
    slow = {**ended, "members": members, "under_trained": True, "needs_cpu_s": 600}
    assert run_ending(slow).endswith("after 1,500 steps · under-trained (needs about 10 min CPU)")
    cut = run_ending({**ended, "members": {**members, "trained": 2, "each": each[:2]}})
    assert cut == "mean of 2 of 3 asked (cancelled) members: step budget after 2,700 steps; CPU budget after 2,213 steps"
