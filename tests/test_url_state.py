"""State that survives a reload and travels in a link: the URL names the dataset and the chosen run, and
a new tab opens on the dataset the workspace's users last made active."""

from __future__ import annotations

import pandas as pd
import pytest
from apptest_util import APP, navigation_mode  # noqa: F401
from streamlit.testing.v1 import AppTest

from recsys_core.data.dataset import build_dataset
from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace

RECOMMEND = "views/recommend.py"


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo plus a second, smaller dataset; EASE (the best) and popularity runs on the demo."""
    root = tmp_path_factory.mktemp("url-state") / "workspace"
    ws = Workspace(root)
    ws.ensure_demo()
    demo = load_demo()
    frame = pd.DataFrame({"user": [f"u{i % 40}" for i in range(400)], "item": [f"i{i % 37}" for i in range(400)]})
    ws.save_dataset(build_dataset(frame, name="second"), "second")
    runs = {f: run_experiment(demo, f, workspace=ws, dataset_name=DEMO_NAME) for f in ("ease", "popularity")}
    return {"root": root, "runs": runs}


@pytest.fixture
def env(workspace_root: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("RECSYS_WORKSPACE", str(workspace_root["root"]))
    Workspace(workspace_root["root"]).set_setting("last_active_dataset", DEMO_NAME)
    return workspace_root


def _session(page: str | None = None, **params: str) -> AppTest:
    """A fresh browser session (a reload or a new tab), opened with `params` in its URL."""
    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption).replace("\\", "")  # Markdown escapes out


def _active(at: AppTest) -> str:
    return at.sidebar.selectbox(key="sidebar_dataset").value


def test_the_url_names_the_active_dataset_and_a_link_opens_it(env: dict) -> None:
    at = _session()
    assert _active(at) == DEMO_NAME
    assert at.query_params["dataset"] == DEMO_NAME

    linked = _session(dataset="second")
    assert _active(linked) == "second"


def test_a_new_tab_opens_on_the_dataset_last_made_active(env: dict) -> None:
    first = _session()
    first.sidebar.selectbox(key="sidebar_dataset").select("second").run()
    assert _active(first) == "second"
    assert Workspace(env["root"]).get_setting("last_active_dataset") == "second"

    assert _active(_session()) == "second"  # a colleague's new tab, no link
    assert _active(_session(dataset=DEMO_NAME)) == DEMO_NAME  # a link still wins


def test_a_link_with_a_run_opens_that_model_and_a_bad_run_falls_back_to_the_best(env: dict) -> None:
    popularity = env["runs"]["popularity"]
    chosen = _session(RECOMMEND, dataset=DEMO_NAME, run=str(popularity.run_id))
    captions = _captions(chosen)
    assert "the model you chose (popularity" in captions

    for bad in ("999999", "not-a-number"):
        best = _session(RECOMMEND, dataset=DEMO_NAME, run=bad)
        captions = _captions(best)
        assert "the best NDCG@10" in captions and "ease" in captions
        assert "run" not in best.query_params


def test_a_bad_dataset_in_the_link_falls_back_without_an_error(env: dict) -> None:
    at = _session(dataset="../../etc")
    assert _active(at) == DEMO_NAME
    assert at.query_params["dataset"] == DEMO_NAME


def _warnings(at: AppTest) -> str:
    return " ".join(w.value for w in at.warning).replace("\\", "").replace("**", "")


def test_a_link_to_a_cancelled_run_says_so_on_every_page_that_shows_it(env: dict) -> None:
    ws = Workspace(env["root"])
    cancelled = run_experiment(load_demo(), "popularity", workspace=ws, dataset_name=DEMO_NAME)
    ws.update_run(cancelled.run_id, status="cancelled")
    for page in (RECOMMEND, "views/explain.py", "views/embeddings.py"):
        at = _session(page, dataset=DEMO_NAME, run=str(cancelled.run_id))
        assert f"Run #{cancelled.run_id} (popularity) was cancelled before it finished" in _warnings(at), page
        if page != "views/embeddings.py":  # which names the model in a caption there, in a picker on Embeddings
            assert "the model you chose (popularity" in _captions(at) and ", cancelled)" in _captions(at)
    finished = _session(RECOMMEND, dataset=DEMO_NAME, run=str(env["runs"]["popularity"].run_id))
    assert "Run #" not in _warnings(finished)  # a finished run opens without a warning


def test_train_keeps_the_chosen_model_family_in_the_link(env: dict) -> None:
    at = _session("views/train.py", dataset=DEMO_NAME, model="itemknn")
    assert at.selectbox(key="train_family").value == "itemknn"
    at.selectbox(key="train_family").set_value("popularity").run()
    assert at.query_params["model"] == "popularity"
    for stale in ("no-such-model", ""):
        opened = _session("views/train.py", dataset=DEMO_NAME, model=stale)
        assert opened.selectbox(key="train_family").value == "bert4rec"  # the first family the demo offers
    opened.session_state["train_estimate"].join(600)  # its time is being measured: let the thread end in the test


def test_blurbs_keep_user_item_and_tone_in_the_link(env: dict) -> None:
    ds = load_demo()
    first = _session("views/blurbs.py", dataset=DEMO_NAME)
    user = 7 if first.selectbox(key="blurbs_user").value != 7 else 8
    first.selectbox(key="blurbs_user").set_value(user).run()
    first.selectbox(key="blurbs_item").select_index(2).run()  # the third recommendation
    item = first.selectbox(key="blurbs_item").value
    first.selectbox(key="blurbs_tone").set_value("push notification").run()
    assert not first.exception, first.exception
    params = {k: first.query_params[k] for k in ("user", "item", "tone")}
    assert params == {"user": str(ds.user_ids[int(user)]), "item": str(ds.item_ids[int(item)]), "tone": "push notification"}

    reloaded = _session("views/blurbs.py", dataset=DEMO_NAME, **params)
    assert reloaded.selectbox(key="blurbs_user").value == int(user)
    assert reloaded.selectbox(key="blurbs_item").value == int(item)
    assert reloaded.selectbox(key="blurbs_tone").value == "push notification"
