"""The command line never shows a traceback: an error of the engine's family prints one JSON error document
(type, message, hint, where) on stderr and exits 2, Ctrl-C exits 130, a bug prints a generic one-line document
and exits 1, and only `--debug` adds the traceback. Run as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import build_dataset
from recsys_core.models.ease import EASE

BROKEN = "import sys, recsys_core.cli as cli; cli.cmd_recommend = lambda args: 1 / 0; sys.exit(cli.main(sys.argv[1:]))"


def _cli(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", code] if code else ["-m", "recsys_core"]
    return subprocess.run([sys.executable, *head, "--workspace", str(cwd / "ws"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)


def _error(proc: subprocess.CompletedProcess) -> dict:
    """The one JSON error line, last on stderr; nothing on stdout and no traceback anywhere."""
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stderr.strip().splitlines()[-1])["error"]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-errors")
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"user": rng.integers(0, 30, 300), "item": rng.integers(0, 20, 300)})
    model = EASE().fit(build_dataset(rows, name="tiny")).save(folder / "models" / "ease")
    broken = shutil.copytree(model, folder / "models" / "broken")
    meta = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**meta, "config": "abc"}))
    return folder


def test_an_engine_error_is_one_json_document_with_its_hint_and_exit_2(damaged):
    proc = _cli("evaluate", "--model-dir", "models/broken", "--dataset", "demo", cwd=damaged)
    assert proc.returncode == 2
    err = _error(proc)
    assert err["type"] == "ModelError" and "expected an object of settings" in err["message"]
    assert err["hint"].startswith("re-export the model") and err["file"] == "broken/config.json"
    assert "What to do:" in err["text"] and str(damaged) not in proc.stderr  # no server path either
    unknown = _error(_cli("train", "--dataset", "demo", "--model", "nope", "--no-estimate", cwd=damaged))
    assert unknown["type"] == "ConfigError" and unknown["message"] == "unknown model 'nope'" and "ease" in unknown["hint"]
    part = _error(_cli("train", "--dataset", "demo", "--model", "blend", "--set", "parts=bert4rec + ease", "--no-estimate",
                       cwd=damaged))  # a blend's part it cannot hold, named before any data is read
    assert part["setting"] == "parts" and part["message"] == "part 2: 'ease' cannot be part of a blend"
    assert "bert4rec" in part["hint"] and "sasrec" in part["hint"]


def test_a_bug_is_a_generic_line_and_exit_1_with_the_traceback_only_on_request(damaged):
    proc = _cli("recommend", "--model-dir", "x", "--user", "1", cwd=damaged, code=BROKEN)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    err = _error(proc)
    assert err == {"type": "InternalError", "message": "unexpected ZeroDivisionError; the command did not finish",
                   "hint": "run it again with --debug (recsys --debug ...) for the traceback, and report it"}
    debug = subprocess.run([sys.executable, "-c", BROKEN, "--debug", "recommend", "--model-dir", "x", "--user", "1"],
                           cwd=damaged, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ZeroDivisionError: division by zero" in debug.stderr
    assert json.loads(debug.stderr.strip().splitlines()[-1])["error"]["type"] == "InternalError"


def test_ctrl_c_stops_a_run_with_exit_130_and_no_traceback(damaged):
    timed = damaged / "timed.csv"
    pd.DataFrame({"user": np.repeat(np.arange(40), 8), "item": np.tile(np.arange(8), 40),
                  "timestamp": np.arange(320)}).to_csv(timed, index=False)
    proc = subprocess.Popen([sys.executable, "-m", "recsys_core", "--workspace", str(damaged / "ws"), "train",
                             "--dataset", str(timed), "--model", "sasrec", "--profile", "none", "--no-save",
                             "--no-estimate", "--set", "hidden=8", "--set", "layers=1", "--set", "heads=1",
                             "--set", "max_len=4", "--set", "epochs=1000000", "--set", "patience=0"],
                            cwd=damaged, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while "epoch" not in "".join(said) and time.monotonic() < deadline:  # its progress bar: training has begun
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(10)
    finally:
        proc.kill()
    err = "".join(said)
    assert proc.returncode == 130 and proc.stdout.read() == "" and "Traceback" not in err, err[-2000:]
    assert json.loads(err.strip().splitlines()[-1])["error"]["type"] == "Interrupted"
