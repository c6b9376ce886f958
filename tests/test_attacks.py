"""The project's attack set, engine level: hostile or unlucky inputs must end in the project's own error.

Real parts only: the real pyarrow parse in a real child process, real zip archives, real model folders, a
real loopback HTTP server. `bench/attacks.py` runs the same kinds of cases and counts the outcomes.
"""

from __future__ import annotations

import io
import os

import pandas as pd
import pytest

from recsys_core.data.isolated import run_isolated
from recsys_core.data.read import _json_frame, read_table
from recsys_core.data.source import Blob
from recsys_core.errors import DataError, RecsysError, ResourceError


def nested_jsonl(depth: int = 20_000) -> bytes:
    """One line of `depth` nested objects: segfaults pyarrow.json.read_json in the process that parses it."""
    return b'{"a":' * depth + b"1" + b"}" * depth + b"\n"


# ---- untrusted parsing --------------------------------------------------------------------------------


def test_nested_json_lines_crash_the_child_not_this_process() -> None:
    with pytest.raises(DataError, match="crashed") as caught:
        read_table(nested_jsonl(), "nested.jsonl")
    assert caught.value.file == "nested.jsonl" and "flatten" in caught.value.hint
    # Still alive, and the next parse works.
    assert read_table(b'{"user": "1", "item": "2"}\n', "ok.jsonl").n_rows == 1
    assert os.getpid() > 0


def test_a_parse_over_the_memory_limit_is_a_resource_error(monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_PARSE_MEMORY_MB", "300")
    rows = b"".join(b'{"user": "%d", "item": "%d", "note": "%s"}\n' % (i, i, b"x" * 200) for i in range(400_000))
    with pytest.raises(ResourceError, match="memory|MB") as caught:
        read_table(rows, "big.jsonl")
    assert "RECSYS_PARSE_MEMORY_MB" in caught.value.hint


def test_a_parse_over_the_time_limit_is_stopped() -> None:
    # A child interpreter needs ~0.5 s to start: a 0.05 s limit is always exceeded.
    with pytest.raises(ResourceError, match="longer than 0.05 s") as caught:
        run_isolated(_json_frame, Blob(b'{"a": 1}\n', "slow.jsonl"), 10, file="slow.jsonl", timeout_s=0.05)
    assert caught.value.file == "slow.jsonl"


def test_only_engine_functions_run_in_the_child() -> None:
    with pytest.raises(ValueError, match="recsys_core functions only"):
        run_isolated(os.getpid, file="x")


def test_rows_read_are_capped(monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_MAX_ROWS", "100")
    frame = pd.DataFrame({"user": [str(i) for i in range(500)], "item": ["1"] * 500})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    for data, name in [(buf.getvalue(), "r.parquet"), (frame.to_json(orient="records", lines=True).encode(), "r.jsonl")]:
        with pytest.raises(ResourceError, match="over the limit of 100") as caught:
            read_table(data, name)
        assert "RECSYS_MAX_ROWS" in caught.value.hint and isinstance(caught.value, RecsysError)
