"""The error family: one base that pages and the CLI catch, subclasses that say whose move it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys_core.errors import ConfigError, DataError, ModelError, RecsysError, ResourceError
from recsys_core.training.experiment import make_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls", [DataError, ConfigError, ModelError, ResourceError])
def test_every_error_names_where_and_what_to_do(cls: type[RecsysError]) -> None:
    err = cls("bad value", file="ratings.csv", line=7, column="rating", hint="fix the value")
    assert isinstance(err, RecsysError)
    assert str(err) == "file 'ratings.csv', line 7, column 'rating': bad value\nWhat to do: fix the value"
    assert (err.file, err.line, err.column, err.hint) == ("ratings.csv", 7, "rating", "fix the value")


def test_bad_settings_are_config_errors_that_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="ease has no setting 'l3'") as err:
        make_model("ease", {"l3": "1"})
    assert "l2" in err.value.hint
    with pytest.raises(ConfigError, match="not a float"):
        make_model("ease", {"l2": "lots"})


def test_cli_turns_any_engine_error_into_exit_status_2_with_the_hint(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "recsys_core", "--workspace", str(tmp_path), "train", "--dataset", "demo",
           "--model", "ease", "--set", "l3=1", "--no-save"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "ease has no setting 'l3'" in proc.stderr and "What to do:" in proc.stderr
    assert "Traceback" not in proc.stderr
