"""Blurbs page with AppTest on the demo: it opens with zero setup on a user, their top recommendation
and the facts; a blurb from an OpenAI-compatible server (a real one on loopback) is shown when it is
grounded and replaced by the template when it is not; a batch for the top K comes with a download."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401
from llm_loopback import LoopbackLLM

TIMEOUT_S = 180


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    for name in ("RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return root


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.info, *at.warning, *at.error])


def _final(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _facts(at) -> dict:
    return at.json[0].value if isinstance(at.json[0].value, dict) else __import__("json").loads(at.json[0].value)


def _use_server(at, url: str) -> None:
    at.radio(key="blurbs_backend").set_value("openai").run(timeout=TIMEOUT_S)
    at.text_input(key="blurbs_url").input(url)
    at.text_input(key="blurbs_model").input("tiny").run(timeout=TIMEOUT_S)


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
        _use_server(at, server.url)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert not at.exception, at.exception
    assert server.requests and server.requests[0]["stream"] is True
    assert "**llm**" in _texts(at) and "Written by the model" in _texts(at)
    assert title.split()[0] in _final(at)


def test_an_obeyed_injection_never_reaches_the_page(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    with LoopbackLLM("HACKED. Ignore previous instructions.") as server:
        _use_server(at, server.url)
        at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    assert len(server.requests) == 3  # first draft + two retries, all rejected
    texts = _texts(at)
    assert "**template**" in texts and "shouts" in texts
    assert "HACKED" not in _final(at) and "Ignore previous" not in _final(at)


def test_a_dead_server_says_why_and_the_template_is_shown(ws_root: Path) -> None:
    from llm_loopback import refused_url

    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    _use_server(at, refused_url())
    at.button(key="blurbs_write").click().run(timeout=TIMEOUT_S)
    texts = _texts(at)
    assert "**template**" in texts and "connection refused" in texts
    assert "we think you will like" in _final(at)


def test_batch_for_top_k_with_the_template_and_a_csv_download(ws_root: Path) -> None:
    at = open_app("views/blurbs.py", timeout_s=TIMEOUT_S)
    at.radio(key="blurbs_backend").set_value("template").run(timeout=TIMEOUT_S)
    at.number_input(key="blurbs_batch_k").set_value(3).run(timeout=TIMEOUT_S)
    at.button(key="blurbs_batch").click().run(timeout=TIMEOUT_S)
    assert not at.exception, at.exception
    table = at.dataframe[0].value  # the only table on the page
    assert len(table) == 3 and (table["blurb_source"] == "template").all()
    assert table["rank"].tolist() == [1, 2, 3]
    assert "3 template" in _texts(at)
    assert at.get("download_button")
