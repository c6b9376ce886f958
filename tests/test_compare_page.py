"""Compare page with AppTest on the demo: the per-user breakdown comes from the metrics each run stored at
evaluation time (no model is loaded or re-scored); a run recorded before they were stored is re-scored
once and its file added."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.evaluation.compare import PER_USER_FILE, load_per_user
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    return root


def _segment_bars(at, run_id: int) -> list[float]:
    """The y values of the history-length chart's bars of run #`run_id`."""
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    return [float(y) for trace in spec["data"] if f"#{run_id} " in trace["name"] for y in _values(trace["y"])]


def _values(data) -> np.ndarray:
    """Plotly sends numeric arrays as {"dtype", "bdata": base64} (typed arrays), or as plain lists."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
    return np.asarray(data, dtype=float)


def test_the_breakdown_is_read_from_the_metrics_stored_with_each_run(ws_root: Path) -> None:
    ws, ds = Workspace(ws_root), load_demo()
    ws.ensure_demo()
    runs = [run_experiment(ds, family, workspace=ws, dataset_name=DEMO_NAME) for family in ("popularity", "ease")]
    folder = ws.get_run(runs[1].run_id).artifact_dir
    stored = np.load(folder / PER_USER_FILE, allow_pickle=False)
    stored["ndcg@10"] = 0.625  # a value no model scores on every user: only the stored file can show it
    np.save(folder / PER_USER_FILE, stored, allow_pickle=False)
    at = open_app("views/compare.py", timeout_s=120)
    assert not at.exception, at.exception
    bars = _segment_bars(at, runs[1].run_id)
    assert bars and all(y == pytest.approx(0.625) for y in bars if np.isfinite(y))


def test_a_run_without_stored_metrics_is_re_scored_once_and_gets_them(ws_root: Path) -> None:
    ws, ds = Workspace(ws_root), load_demo()
    ws.ensure_demo()
    result = run_experiment(ds, "ease", workspace=ws, dataset_name=DEMO_NAME)
    folder = ws.get_run(result.run_id).artifact_dir
    expected = load_per_user(folder)
    (folder / PER_USER_FILE).unlink()  # as a run recorded before per-user metrics were stored
    at = open_app("views/compare.py", timeout_s=120)
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 3
    again = load_per_user(folder)
    assert again is not None and np.allclose(again["ndcg@10"], expected["ndcg@10"])


def test_a_run_that_cannot_be_scored_is_named_and_the_others_are_still_broken_down(ws_root: Path) -> None:
    ws, ds = Workspace(ws_root), load_demo()
    ws.ensure_demo()
    runs = [run_experiment(ds, "popularity", workspace=ws, dataset_name=DEMO_NAME) for _ in range(2)]
    broken = ws.get_run(runs[1].run_id).artifact_dir
    (broken / PER_USER_FILE).unlink()  # so it must be scored: and its weights are gone
    (broken / "model.safetensors").unlink()
    at = open_app("views/compare.py", timeout_s=120)
    assert not at.exception, at.exception
    picker = at.multiselect(key="compare_segments_runs")
    picker.set_value(list(picker.options)).run()
    assert not at.exception, at.exception
    warnings = [w.value.replace("\\", "") for w in at.warning if "left out of the breakdown" in w.value]  # unescaped
    assert len(warnings) == 1 and f"#{runs[1].run_id} " in warnings[0] and "model.safetensors" in warnings[0]
    assert _segment_bars(at, runs[0].run_id) and not _segment_bars(at, runs[1].run_id)
