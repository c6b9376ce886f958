"""The Recommend page's "Use this from code" panel: the exact curl for the user and filters on screen, the API docs
link when RECSYS_API_URL names a server, and never the API key itself."""

from __future__ import annotations

import json
import shlex

import pytest
from apptest_util import navigation_mode, open_app  # noqa: F401

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.models.base import load_model
from recsys_core.recommend.usecases import Query
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace
from views.ui.model_state import recommendations

PAGE = "views/recommend.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("api-panel") / "workspace"
    ws = Workspace(root)
    ws.ensure_demo()
    run = run_experiment(load_demo(), "ease", workspace=ws, dataset_name=DEMO_NAME)
    return {"root": root, "folder": run.artifact_dir}


def _curl(at) -> list[str]:
    code = [c.value for c in at.code if "curl" in c.value]
    assert len(code) == 1, code
    return shlex.split(code[0])


def test_the_panel_shows_the_curl_of_the_list_on_screen(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_WORKSPACE", str(trained["root"]))
    monkeypatch.setenv("RECSYS_API_URL", "http://api.example:8000/")
    monkeypatch.setenv("RECSYS_API_KEY", "secret-never-shown")
    at = open_app(PAGE)
    at.multiselect(key="rec_genres").set_value(["Horror"]).run()
    at.slider(key="rec_hide_popular").set_value(10).run()
    assert not at.exception, at.exception
    words = _curl(at)
    assert words[:4] == ["curl", "-s", "-X", "POST"] and words[4] == "http://api.example:8000/v1/recommend"
    assert "Authorization: Bearer $RECSYS_API_KEY" in words
    assert not any("secret-never-shown" in str(e.value) for e in [*at.code, *at.markdown, *at.caption])
    body = json.loads(words[words.index("-d") + 1])
    ds = load_demo()
    assert body == {"user": ds.user_ids[0], "k": 10, "filters": {"any_of": {"genres": ["Horror"]}},
                    "hide_popular_top": 0.1}
    # What the body asks is what the page shows.
    query = Query.of(user=body["user"], k=body["k"], any_of=body["filters"]["any_of"],
                     hide_popular_top=body["hide_popular_top"])
    shown = at.container(key="rec_topk").dataframe[0].value["item_id"].tolist()
    assert recommendations(load_model(trained["folder"]), ds, query)["item_id"].tolist() == shown
    assert any("http://api.example:8000/docs" in str(m.value) for m in at.markdown)


def test_without_a_server_the_panel_says_how_to_start_one(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_WORKSPACE", str(trained["root"]))
    monkeypatch.delenv("RECSYS_API_URL", raising=False)
    monkeypatch.delenv("RECSYS_API_KEY", raising=False)
    at = open_app(PAGE)
    words = _curl(at)
    assert words[4] == "http://127.0.0.1:8000/v1/recommend" and not any("Authorization" in w for w in words)
    assert any("recsys serve --dataset" in str(c.value) for c in at.caption)
