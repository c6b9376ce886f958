"""The project's attack set, engine level: hostile or unlucky inputs must end in the project's own error.

Real parts only: the real pyarrow parse in a real child process, real zip archives, real model folders, a
real loopback HTTP server. `bench/attacks.py` runs the same kinds of cases and counts the outcomes.
"""

from __future__ import annotations

import io
import os
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from llm_loopback import LoopbackLLM

from bench.attacks import HTML_TITLES, crafted_model_folders, nested_jsonl, tiny_dataset, zip_of
from recsys_core.blurbs.hub import is_hub_name
from recsys_core.blurbs.remote import OpenAIBackend
from recsys_core.data.isolated import run_isolated
from recsys_core.data.read import _json_frame, _text_child, read_table
from recsys_core.data.source import DEFAULT_MAX_BYTES, Blob
from recsys_core.errors import ConfigError, DataError, LLMError, ModelError, RecsysError, ResourceError
from recsys_core.models.base import load_model
from recsys_core.training.experiment import check_paths, run_experiment
from recsys_core.workspace.artifacts import import_model_zip
from recsys_core.workspace.registry import Workspace
from views.ui import charts

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
        run_isolated(os.getpid, Blob(b"", "x"), file="x")


def test_rows_read_are_capped(monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_MAX_ROWS", "100")
    frame = pd.DataFrame({"user": [str(i) for i in range(500)], "item": ["1"] * 500})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    for data, name in [(buf.getvalue(), "r.parquet"), (frame.to_json(orient="records", lines=True).encode(), "r.jsonl")]:
        with pytest.raises(ResourceError, match="over the limit of 100") as caught:
            read_table(data, name)
        assert "RECSYS_MAX_ROWS" in caught.value.hint and isinstance(caught.value, RecsysError)


HOSTILE_CSV = {
    # One 40 MB field: the reader refuses a row that straddles its 16 MB blocks.
    "giant_field.csv": b"user,item\n1," + b"x" * (40 << 20) + b"\n2,3\n",
    # An unclosed quote swallows every later line into one field.
    "open_quote.csv": b'user,item\n"1,2\n' + b"3,4\n" * 300_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CSV))
def test_hostile_csv_uploads_are_data_errors_and_this_process_survives(name) -> None:
    # Usually a DataError naming the problem; in one full-suite run the 40 MB field instead made Arrow abort
    # in the limited child (SIGABRT), which is reported as a ResourceError: both are the project's error.
    with pytest.raises((DataError, ResourceError)) as caught:
        read_table(HOSTILE_CSV[name], name)
    assert caught.value.file == name and caught.value.hint
    assert read_table(b"user,item\n1,2\n3,4\n", "ok.csv").n_rows == 2


def test_csv_uploads_parse_under_the_childs_memory_limit(monkeypatch) -> None:
    # ~85 MB of text needs more than 300 MB to parse and send back: only a limited child can fail this way.
    rows = b"user,item,note\n" + b"".join(b"%d,%d,%s\n" % (i, i, b"y" * 200) for i in range(400_000))
    monkeypatch.setenv("RECSYS_PARSE_MEMORY_MB", "300")
    with pytest.raises(ResourceError, match="memory|MB") as caught:
        read_table(rows, "big.csv")
    assert caught.value.file == "big.csv"
    monkeypatch.delenv("RECSYS_PARSE_MEMORY_MB")
    assert read_table(rows, "big.csv").n_rows == 400_000  # the same upload within the default limit


def test_csv_rows_and_bytes_read_are_capped(monkeypatch) -> None:
    rows = b"user,item\n" + b"".join(b"%d,%d\n" % (i, i % 97) for i in range(100_000))  # > INLINE_TEXT_BYTES
    monkeypatch.setenv("RECSYS_MAX_ROWS", "5000")
    with pytest.raises(ResourceError, match="over the limit of 5,000") as caught:
        read_table(rows, "many.csv")
    assert "RECSYS_MAX_ROWS" in caught.value.hint
    with pytest.raises(ResourceError, match="over the limit of 5,000"):  # small uploads too (parsed in-process)
        read_table(b"user,item\n" + b"1,2\n" * 6_000, "small.csv")
    # The child's reader stops at the first 16 MB block past a cap, rows or decoded bytes alike.
    with pytest.raises(ResourceError, match="at least"):
        run_isolated(_text_child, Blob(rows, "many.csv"), 5_000, 2**40, file="many.csv")
    with pytest.raises(ResourceError, match="read limit") as caught:
        run_isolated(_text_child, Blob(rows, "many.csv"), 10**9, 1 << 20, file="many.csv")
    assert "RECSYS_MAX_READ_MB" in caught.value.hint


def test_a_local_path_is_trusted_and_parsed_in_process(tmp_path, monkeypatch) -> None:
    rows = b"user,item\n" + b"".join(b"%d,%d\n" % (i, i % 97) for i in range(100_000))
    path = tmp_path / "r.csv"
    path.write_bytes(rows)
    monkeypatch.setenv("RECSYS_MAX_ROWS", "5000")
    monkeypatch.setenv("RECSYS_PARSE_MEMORY_MB", "1")  # a child could not even start: none is used
    assert read_table(path).n_rows == 100_000


def test_an_upload_is_parsed_once_for_preview_and_save(monkeypatch) -> None:
    from recsys_core.data import load_dataset
    from recsys_core.data import read as read_module

    data = b"user,item,rating\n" + b"".join(b"u%d,i%d,%d\n" % (i % 900, i % 311, i % 5 + 1) for i in range(30_000))
    calls = []
    real = read_module.run_isolated
    monkeypatch.setattr(read_module, "run_isolated", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    raw = read_table(data, "r.csv")  # the Data page's preview
    ds, _ = load_dataset(data, "r.csv", parsed=raw)  # its Save step
    assert len(calls) == 1 and ds.n_interactions == 30_000


# ---- the workspace jail --------------------------------------------------------------------------------

@pytest.fixture()
def ws(tmp_path):
    return Workspace(tmp_path / "workspace")


def test_paths_inside_the_workspace_resolve_there(ws) -> None:
    assert ws.resolve_inside("models/run-1", "model folder") == ws.root / "models" / "run-1"
    assert ws.resolve_inside(ws.root / "models", "model folder") == ws.root / "models"


@pytest.mark.parametrize("path", ["/etc", "..", "../other/models", "models/../../x", "~", "link", "link/sub", "a\x00b"])
def test_paths_outside_the_workspace_are_refused(ws, tmp_path, path) -> None:
    (tmp_path / "other").mkdir()
    (ws.root / "link").symlink_to(tmp_path / "other")  # a symlink inside pointing out is outside
    with pytest.raises(ConfigError) as caught:
        ws.resolve_inside(path, "model folder")
    assert "RECSYS_ALLOWED_PATHS" in caught.value.hint or "inside the workspace" in caught.value.hint


def test_the_operator_allow_list_opens_more_folders(ws, tmp_path, monkeypatch) -> None:
    shared = tmp_path / "shared-models"
    shared.mkdir()
    with pytest.raises(ConfigError):
        ws.resolve_inside(shared)
    monkeypatch.setenv("RECSYS_ALLOWED_PATHS", f"{tmp_path / 'nope'}{os.pathsep}{shared}")
    assert ws.resolve_inside(shared / "m") == shared / "m"


def test_checkpoint_dir_outside_is_refused_before_training(ws, tmp_path) -> None:
    target = tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match="checkpoint_dir .* is outside the workspace"):
        run_experiment(tiny_dataset(), "sasrec", {"epochs": 1, "checkpoint_dir": str(target)}, workspace=ws)
    assert not target.exists()
    with pytest.raises(ConfigError, match="text_tower_dir"):
        check_paths("hybrid", {"text_tower_dir": str(tmp_path)}, ws)


def test_checkpoint_dir_inside_is_resolved_there(ws) -> None:
    result = run_experiment(tiny_dataset(), "sasrec", {"epochs": 1, "hidden": 8, "max_len": 8, "layers": 1,
                                                       "heads": 1, "checkpoint_dir": "ckpt"}, workspace=ws)
    assert result.model.config.train.checkpoint_dir == str(ws.root / "ckpt") and (ws.root / "ckpt").is_dir()


def test_llm_folders_are_not_hub_names() -> None:
    assert is_hub_name("HuggingFaceTB/SmolLM2-360M-Instruct")
    for source in ("/etc", "../../etc", "~/models", "a/../../b", "."):
        assert not is_hub_name(source)


# ---- crafted model folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return crafted_model_folders(tmp_path_factory.mktemp("crafted"))


@pytest.mark.parametrize("name", ["missing_n_items", "n_items_text", "max_len_16m", "max_len_mismatch", "hidden_mismatch",
                                  "sizes_unlike_weights", "unknown_family", "config_is_a_list", "item_ids_not_a_list",
                                  "pickle_as_safetensors", "header_length_lie", "truncated_weights",
                                  "weights_of_another_shape", "nested_config_json", "ease_wrong_shape"])
def test_crafted_model_folders_are_model_errors_without_allocating(crafted, name) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelError) as caught:
        load_model(crafted[name])
    assert caught.value.hint  # says what to do
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KB: no big allocation


def test_model_zip_bombs_are_refused(ws) -> None:
    data = zip_of({"m/config.json": b"{}", "m/model.safetensors": bytes(64 << 20)})
    with pytest.raises(ResourceError, match="expands"):
        import_model_zip(data, ws.models_dir(), filename="bomb.zip")
    assert list(ws.models_dir().iterdir()) == []


# ---- LLM endpoints -------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_server_key_goes_only_to_the_operators_url(monkeypatch) -> None:
    monkeypatch.delenv("RECSYS_LLM_ENDPOINTS", raising=False)
    with LoopbackLLM("ok", operator=False) as operator, LoopbackLLM("ok", operator=False) as visitor:
        monkeypatch.setenv("RECSYS_LLM_URL", operator.url)
        monkeypatch.setenv("RECSYS_LLM_API_KEY", "sk-operator")
        with pytest.raises(LLMError, match="not one of the servers the operator configured"):
            list(OpenAIBackend.from_env(visitor.url, "m").generate(MESSAGES))
        list(OpenAIBackend.from_env(operator.url + "/v1", "m").generate(MESSAGES))
    assert visitor.requests == []  # a visitor's server is never contacted, with or without a key
    assert operator.headers[0]["Authorization"] == "Bearer sk-operator"


def test_remote_error_bodies_are_not_echoed() -> None:
    with LoopbackLLM(mode="bad-json") as server, pytest.raises(LLMError) as caught:
        list(OpenAIBackend(server.url, "m").generate(MESSAGES, stream=False))
    assert "<html>" not in str(caught.value) and "not valid JSON" in str(caught.value)


def test_non_streaming_replies_are_capped() -> None:
    with LoopbackLLM("x" * (2 << 20)) as server, pytest.raises(LLMError, match="over 1 MB"):
        list(OpenAIBackend(server.url, "m").generate(MESSAGES, stream=False))


# ---- HTML and serving defaults ---------------------------------------------------------------------------

def test_chart_labels_are_escaped() -> None:
    ds = tiny_dataset(HTML_TITLES)
    figure = charts.long_tail_figure(charts.long_tail_frame(ds.item_popularity, labels=ds.labels), "item")
    text = figure.to_json() + "".join(charts.chart_label(t, 42) for t in HTML_TITLES)
    assert "<a " not in text and "<span" not in text and "<img" not in text and "&lt;a href=" in text
    assert charts.chart_label("<b>" + "x" * 50, 10).endswith("…") and "&lt;b&gt;" in charts.chart_label("<b>x", 10)


def test_upload_limit_is_the_engines_and_the_server_binds_localhost() -> None:
    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == DEFAULT_MAX_BYTES // 2**20
    assert config["server"]["address"] == "localhost" and config["server"]["fileWatcherType"] == "none"
    assert config["server"]["runOnSave"] is False and config["client"]["toolbarMode"] == "minimal"


def test_a_data_zip_that_expands_a_thousandfold_is_refused_before_inflating_it() -> None:
    bomb = zip_of({"ratings.csv": b"user,item\n" + b"1,2\n" * 10_000_000})  # 40 MB from ~40 KB
    with pytest.raises(ResourceError, match="expands .* times .* over the 100x limit") as err:
        read_table(bomb, "bomb.zip")
    assert "bomb.zip/ratings.csv" in str(err.value)
    ordinary = zip_of({"ratings.csv": "".join(f"u{i % 97},i{(i * 7919) % 1000},{i % 5 + 1}\n"
                                              for i in range(200_000)).encode()})
    assert read_table(ordinary, "fine.zip").n_rows == 200_000  # real tables compress far less than 100x
