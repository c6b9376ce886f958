"""Thread policy of a shared server: a click uses one thread unless the operator says otherwise, a training
job a fixed count; bad settings fall back instead of stopping the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_core import threads

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, torch
from threadpoolctl import threadpool_info
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=120).run()
assert not at.exception, at.exception
print(json.dumps({"torch": torch.get_num_threads(),
                  "blas": sorted({p["num_threads"] for p in threadpool_info()})}))
"""


def _app_threads(tmp_path: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != threads.INTERACTIVE_ENV}
    environ.update(RECSYS_WORKSPACE=str(tmp_path / "ws"), **env)
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=environ, capture_output=True,
                         text=True, timeout=240, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_app_runs_interactive_work_on_one_thread_by_default(tmp_path: Path) -> None:
    seen = _app_threads(tmp_path)
    assert seen["torch"] == 1
    assert seen["blas"] == [1]


def test_the_operator_can_give_clicks_more_threads(tmp_path: Path) -> None:
    assert _app_threads(tmp_path, RECSYS_INTERACTIVE_THREADS="2")["torch"] == 2


@pytest.mark.parametrize(("raw", "expected"), [("", 1), ("3", 3), ("0", 1), ("many", 1), (" 2 ", 2)])
def test_interactive_setting_is_read_forgivingly(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int) -> None:
    monkeypatch.setenv(threads.INTERACTIVE_ENV, raw)
    assert threads.interactive_threads() == expected


def test_a_training_job_uses_one_thread_unless_the_operator_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.TRAINING_ENV, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.training_threads() == 1  # a CPU budget buys the same steps at any load (issue 21)
    monkeypatch.setenv(threads.TRAINING_ENV, "5")
    assert threads.training_threads() == 5
