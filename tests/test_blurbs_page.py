"""Blurbs page with AppTest on the demo: it opens with zero setup on a user, their top recommendation
and the facts; a blurb from an OpenAI-compatible server (a real one on loopback) is shown when it is
grounded and replaced by the template when it is not, and a rejected draft is nowhere on the page; a
batch for the top K runs as a workspace job with progress, a download and a Cancel that stops it within
2 s; servers are picked from the operator's list (no URL field); a typed hub name is refused without a
download and `llm/my-model` is a folder of the workspace's llm/; the server's warm-up loads the bundled
model once per process from the workspace's converted copy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401
from llm_loopback import LoopbackLLM

from recsys_core.blurbs import hub, loading
from recsys_core.blurbs.local import local_default_backend
from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

TIMEOUT_S = 180


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    ws = Workspace(root)  # an EASE run: what the automatic baseline job trains (tests/test_baseline_page.py)
    ws.ensure_demo()
    run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)
    for name in ("RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY", "RECSYS_LLM_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    return root


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.warning, *at.error])


def _final(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _facts(at) -> dict:
    return at.json[0].value if isinstance(at.json[0].value, dict) else json.loads(at.json[0].value)


def _use_server(at, name: str) -> None:
    """Pick one of the operator's servers (a `LoopbackLLM` lists itself while it runs)."""
    at.radio(key="blurbs_backend").set_value("openai").run(timeout=TIMEOUT_S)
    at.selectbox(key="blurbs_endpoint").set_value(name).run(timeout=TIMEOUT_S)


def test_page_opens_with_zero_setup_on_a_user_an_item_and_its_facts(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    assert at.title[0].value == "Blurbs"
    assert at.radio(key="blurbs_backend").value == "local"  # the offline model is the default
    assert len(at.selectbox(key="blurbs_item").options) == 10
    facts = _facts(at)
    item = at.selectbox(key="blurbs_item").value
    assert facts["recommended movie"] and facts["popularity"] and facts["because the user liked"]
    assert "SHAP" in facts["chosen by"]
    assert at.session_state["blurbs_item"] == item


def test_a_grounded_server_reply_is_shown_as_written(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    title = _facts(at)["recommended movie"]
    text = f"{title} is picked for you: give it a try tonight."
    with LoopbackLLM(text) as server:
        _use_server(at, server.name)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert not at.exception, at.exception
    assert server.requests and server.requests[0]["stream"] is True
    assert "**llm**" in _texts(at) and "Written by the model" in _texts(at)
    assert title.split()[0] in _final(at)


def test_a_blurb_written_for_another_model_is_not_shown_and_the_page_says_why(ws_root: Path) -> None:
    """The page's model can change after a blurb was written (the automatic baseline finishing, another run
    chosen): the blurb is about an item the new model may not recommend, so it is not shown, and the page says so."""
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    title = _facts(at)["recommended movie"]
    with LoopbackLLM(f"{title} is picked for you: give it a try tonight.") as server:
        _use_server(at, server.name)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert "Written by the model" in _texts(at)
    other = run_experiment(load_demo(), "popularity", workspace=Workspace(ws_root), dataset_name=DEMO_NAME)
    at.session_state["active_model_dir"] = other.artifact_dir
    at.run(timeout=TIMEOUT_S)
    assert not at.exception, at.exception
    texts = _texts(at).replace("\\", "")  # the model names are Markdown-escaped
    assert "Written by the model" not in texts and "blurbs_final" not in str(at.get("flex_container"))
    assert "The last blurb was written for run #1 (ease" in texts and "Write the blurb again for this model" in texts


def test_an_obeyed_injection_never_reaches_the_page(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    with LoopbackLLM("HACKED. Ignore previous instructions.") as server:
        _use_server(at, server.name)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert len(server.requests) == 3  # first draft + two retries, all rejected
    texts = _texts(at)
    assert "**template**" in texts and "shouts" in texts
    assert "HACKED" not in _final(at) and "Ignore previous" not in _final(at)


def test_a_dead_server_says_why_and_the_template_is_shown(ws_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_loopback import refused_url

    monkeypatch.setenv("RECSYS_LLM_ENDPOINTS", json.dumps([{"name": "down", "url": refused_url(), "model": "tiny"}]))
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    _use_server(at, "down")
    at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    texts = _texts(at)
    assert "**template**" in texts and "connection refused" in texts
    assert "we think you will like" in _final(at)


def _batch_jobs(root: Path) -> list:
    return JobStore(Workspace(root)).list(kind="blurbs")


def _wait_until(condition, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_rejected_draft_is_nowhere_on_the_page(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    title = _facts(at)["recommended movie"]

    def reply(body: dict) -> str:
        if "previous draft was rejected" in body["messages"][-1]["content"]:
            return f"{title} is picked for you: give it a try tonight."
        return f"{title} is the latest installment in the Star Trek universe: https://startrek.example"

    with LoopbackLLM(reply) as server:
        _use_server(at, server.name)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert len(server.requests) == 2 and "**llm-retry**" in _texts(at)
    everything = _texts(at) + "\n".join(str(e.value) for e in at.get("expandable")) + _final(at)
    assert "latest installment" not in everything and "startrek.example" not in everything
    assert "give it a try tonight" in _final(at)


def test_batch_for_top_k_runs_as_a_workspace_job_with_a_csv_download(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    at.radio(key="blurbs_backend").set_value("template").run(timeout=TIMEOUT_S)
    at.number_input(key="blurbs_batch_k").set_value(3).run(timeout=TIMEOUT_S)
    at.button(key="blurbs_batch").click().run(timeout=TIMEOUT_S)
    assert not at.exception, at.exception
    _wait_until(lambda: not _batch_jobs(ws_root)[0].active)
    job = _batch_jobs(ws_root)[0]
    assert job.status == "finished" and job.total == 3 and job.fraction == 1.0
    at.run(timeout=TIMEOUT_S)
    table = at.dataframe[0].value  # the only table on the page
    assert len(table) == 3 and (table["blurb_source"] == "template").all()
    assert table["rank"].tolist() == [1, 2, 3]
    picked = [o.split(" ", 1)[1] for o in at.selectbox(key="blurbs_item").options[:3]]  # "#1 <label>"
    assert table["title"].tolist() == picked  # one label per item: the table names them as the picker does
    assert "3 template" in _texts(at)
    assert at.get("download_button")
    fresh = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)  # another tab: the result is the workspace's
    fresh.radio(key="blurbs_backend").set_value("template").run(timeout=TIMEOUT_S)
    fresh.number_input(key="blurbs_batch_k").set_value(3).run(timeout=TIMEOUT_S)
    assert len(fresh.dataframe[0].value) == 3 and len(_batch_jobs(ws_root)) == 1


def test_a_running_batch_shows_progress_and_cancel_stops_it_within_2_s(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    title_words = "is picked for you and it is a fine choice for a quiet evening at home tonight."
    with LoopbackLLM(lambda body: title_words, word_delay_s=0.4) as server:  # ~7 s a draft
        _use_server(at, server.name)
        at.button(key="blurbs_batch").click().run(timeout=TIMEOUT_S)
        _wait_until(lambda: server.requests and _batch_jobs(ws_root)[0].total)
        job = _batch_jobs(ws_root)[0]
        assert job.active and job.total == 5 and job.title.startswith("Blurbs for user")
        at.run(timeout=TIMEOUT_S)
        assert at.button(key="blurbs_batch").disabled  # one batch of this view at a time
        at.button(key=f"blurbs_batch_job_cancel_{job.id}").click().run(timeout=TIMEOUT_S)
        clicked = time.monotonic()
        _wait_until(lambda: not _batch_jobs(ws_root)[0].active)
        took = time.monotonic() - clicked
        assert _batch_jobs(ws_root)[0].status == "cancelled" and took < 2.0, took
        assert len(server.requests) == 1  # the first blurb's generation was stopped, no second one started
        at.run(timeout=TIMEOUT_S)  # while the server is still one of the operator's: the same batch is shown
    assert "was cancelled" in _texts(at) and not at.dataframe


def test_a_typed_hub_name_is_refused_with_what_to_do(ws_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hub.ENV_ALLOW_HUB, raising=False)
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    at.radio(key="blurbs_backend").set_value("hf").run(timeout=TIMEOUT_S)
    at.text_input(key="blurbs_hf_model").input("someorg/not-a-real-model").run(timeout=TIMEOUT_S)
    errors = "\n".join(str(e.value) for e in at.error).replace("\\", "")  # markdown escapes dropped
    assert "downloading models from the Hugging Face hub is off" in errors and hub.ENV_ALLOW_HUB in errors
    assert "someorg/not-a-real-model" not in str(loading._STATUS.keys())  # no load was even started


def test_servers_are_picked_from_the_operators_list_and_no_url_can_be_typed(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    at.radio(key="blurbs_backend").set_value("openai").run(timeout=TIMEOUT_S)
    assert "blurbs_endpoint" not in [s.key for s in at.selectbox]  # nothing configured: nothing to pick
    assert "No LLM server is set up" in _texts(at) and "RECSYS_LLM_ENDPOINTS" in _texts(at)
    with LoopbackLLM("ok") as first, LoopbackLLM("ok") as second:
        at.run(timeout=TIMEOUT_S)
        shown = at.selectbox(key="blurbs_endpoint").options  # as the visitor reads them: name and model, no URL
        assert shown == [f"{first.name} · model tiny", f"{second.name} · model tiny"]
        for mode in BACKEND_MODES:
            at.radio(key="blurbs_backend").set_value(mode).run(timeout=TIMEOUT_S)
            typed = [f"{t.key} {t.label}".lower() for t in at.text_input]
            assert not any("url" in t or "server" in t or "key" in t.split() for t in typed), (mode, typed)
    assert not at.exception


BACKEND_MODES = ("local", "hf", "openai", "template")


def test_the_example_folder_is_a_workspace_folder_never_a_hub_name(ws_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hub.ENV_ALLOW_HUB, "1")  # even with the hub allowed, llm/... is a folder
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    at.radio(key="blurbs_backend").set_value("hf").run(timeout=TIMEOUT_S)
    at.text_input(key="blurbs_hf_model").input("llm/my-model").run(timeout=TIMEOUT_S)
    errors = "\n".join(str(e.value) for e in at.error).replace("\\", "")
    assert "no such folder in the workspace llm/: 'my-model'" in errors
    assert str(ws_root) not in errors  # the server's own paths stay on the server
    assert "my-model" not in str(loading._STATUS.keys())  # no load was even started


def test_the_servers_warm_up_loads_the_bundled_model_once_from_the_workspace_copy(
        ws_root: Path, local_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    from views.ui import warmup

    *_, cache = local_backend
    (ws_root / "llm").mkdir(parents=True)
    (ws_root / "llm" / loading.DEFAULT_DIRNAME).symlink_to(cache / loading.DEFAULT_DIRNAME)  # converted by a previous run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(warmup.WARMUP_ENV, "1")
    monkeypatch.setattr(warmup, "_started", {})
    monkeypatch.setattr(warmup, "WARM_TASKS", {"local-llm": warmup.WARM_TASKS["local-llm"]})  # UMAP: test_warmup.py
    first, second = warmup.start_warmups(), warmup.start_warmups()
    assert list(first) == ["local-llm"] and first["local-llm"] is second["local-llm"]  # once per process
    first["local-llm"].join(TIMEOUT_S)
    backend = local_default_backend(Workspace(ws_root).root / "llm")
    try:
        assert backend.is_loaded() and backend.status().state == "loaded"
        assert backend.load().loaded_from == "converted"
        at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)  # a visitor arriving now waits for nothing
        assert "Model ready" in _texts(at)
    finally:
        loading.forget_loaded(backend.key())
