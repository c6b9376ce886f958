"""Offer only what can run: the model face says why a configured model cannot train on a dataset (its order
provenance, its size against this machine's memory), and the Train form shows that before anything starts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from apptest_util import APP, navigation_mode  # noqa: F401
from streamlit.testing.v1 import AppTest

from recsys_core.data import LoadOptions, load_dataset
from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ConfigError, ResourceError
from recsys_core.models.base import refusal_of
from recsys_core.models.ease import EASE, EASEConfig, largest_catalogue, memory_needed, memory_refusal
from recsys_core.training.experiment import run_experiment
from recsys_core.workspace.registry import Workspace
from tests.own_data import as_tsv, listening_log

ORDER_FREE_TOWER = {"mode": "zero_shot", "user_vector": "recency_mean", "recency_decay": 1.0}
GIB = 2**30


@pytest.fixture(scope="module")
def plays():
    """A timestamp-less play-count export, sorted by user then artist id (tests/own_data.py)."""
    return load_dataset(as_tsv(listening_log(n_users=80, n_items=60)), "plays.tsv", name="plays")[0]


def test_order_aware_families_are_refused_on_data_without_an_order_with_the_fix(plays) -> None:
    for family in ("bert4rec", "sasrec", "hybrid", "text_tower"):
        refused = refusal_of(family, None, plays)
        assert refused is not None, family
        assert "needs the order" in refused.reason and "no timestamps" in refused.reason
        assert "add a timestamp column" in refused.fix and "time order on the Data page" in refused.fix
        assert isinstance(refused.error(), ConfigError) and refused.error().hint == refused.fix
    assert "recency_decay 1" in refusal_of("text_tower", None, plays).fix  # the settings that make it order-free
    for family in ("ease", "itemknn", "popularity"):
        assert refusal_of(family, None, plays) is None, family
    assert refusal_of("text_tower", ORDER_FREE_TOWER, plays) is None
    weighted = refusal_of("itemknn", {"recency_half_life": 5.0}, plays)
    assert weighted is not None and "recency_half_life to 0" in weighted.fix


def test_a_declared_file_order_offers_every_family() -> None:
    declared, _ = load_dataset(as_tsv(listening_log(n_users=80, n_items=60)), "plays.tsv",
                               options=LoadOptions(file_order_is_time=True))
    for family in ("bert4rec", "sasrec", "hybrid", "text_tower", "ease", "itemknn", "popularity"):
        assert refusal_of(family, None, declared) is None, family


def test_the_engine_still_refuses_what_the_form_would_not_offer(plays) -> None:
    with pytest.raises(ConfigError, match="has no timestamps"):
        run_experiment(plays, "sasrec")


def test_ease_limit_follows_the_memory_it_needs_and_the_machine_has() -> None:
    # the catalogue: 17,632 items, refused by the old fixed 15,000-item limit
    assert memory_needed(17_632, "float64") == 3 * 17_632**2 * 8
    assert memory_refusal(17_632, "float64", 20 * GIB) is None
    too_big = memory_refusal(17_632, "float64", 8 * GIB)  # 6.9 GiB needed, 6.4 allowed; float32 needs 3.5
    assert too_big is not None and too_big.kind is ResourceError
    assert "6.9 GiB" in too_big.reason and "8.0 GiB free" in too_big.reason
    assert too_big.fix.startswith("set dtype to float32") and "item-kNN" in too_big.fix and "rare items" in too_big.fix
    neither = memory_refusal(17_632, "float64", 4 * GIB)
    assert neither is not None and "float32" not in neither.fix and "item-kNN" in neither.fix
    assert memory_refusal(17_632, "float32", 8 * GIB) is None
    limit = largest_catalogue(8 * GIB, "float32")
    assert memory_refusal(limit, "float32", 8 * GIB) is None and memory_refusal(limit + 1, "float32", 8 * GIB)


def test_ease_refuses_before_fitting_a_catalogue_no_machine_holds() -> None:
    n = 200_000  # 894 GiB of float64 matrices: refused on any machine this runs on, before anything is allocated
    huge = build_dataset(pd.DataFrame({"user": [f"u{i % 1000}" for i in range(n)], "item": [f"i{i}" for i in range(n)]}),
                         name="huge")
    refused = EASE().refusal(huge)
    assert refused is not None and "GiB free" in refused.reason
    with pytest.raises(ResourceError, match="GiB free") as err:
        EASE().fit(huge)
    assert "item-kNN" in err.value.hint
    assert EASE(EASEConfig(max_items=0)).training_memory(n) == memory_needed(n, "float64")


# ---- the Train form --------------------------------------------------------------------------------


@pytest.fixture
def ws_with_plays(plays, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    ws = Workspace(root)
    ws.ensure_demo()
    ws.save_dataset(plays, "plays")
    return root


def _train_page(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.error]).replace("\\", "")


def test_the_form_opens_on_a_model_that_can_run_and_marks_the_others(ws_with_plays: Path) -> None:
    at = _train_page(dataset="plays")
    family = at.selectbox(key="train_family")
    assert family.value == "ease"  # BERT4Rec, SASRec+, the hybrid, the text tower and blends of them are refused here
    marked = [o for o in family.options if o.endswith("(not offered on this data)")]
    assert [o.split(":")[0] for o in marked] == ["BERT4Rec", "SASRec+", "Hybrid", "Text tower", "Blend"]
    assert "Not offered on this data with their defaults: BERT4Rec, SASRec+, Hybrid, Text tower, Blend" in _texts(at)
    assert at.selectbox(key="train_split").options == ["leave_one_out"]
    assert "Temporal split: not offered" in _texts(at)
    assert not at.button(key="train_start").disabled


def test_a_refused_model_shows_why_and_what_to_do_and_cannot_start(ws_with_plays: Path) -> None:
    at = _train_page(dataset="plays")
    at.selectbox(key="train_family").set_value("bert4rec").run()
    shown = _texts(at)
    assert "Not offered on this data:" in shown and "needs the order of each user's interactions" in shown
    assert "add a timestamp column, or say the file is in time order on the Data page" in shown
    assert "Expected time" not in shown  # nothing is measured for a run that cannot start
    assert at.button(key="train_start").disabled


def test_the_settings_that_make_a_model_order_free_offer_it(ws_with_plays: Path) -> None:
    at = _train_page(dataset="plays")
    at.selectbox(key="train_family").set_value("text_tower").run()
    assert at.button(key="train_start").disabled and "recency_decay 1" in _texts(at)
    prefix = next(w.key for w in at.selectbox if w.key and w.key.endswith("_text_tower_mode")).rsplit("mode", 1)[0]
    at.selectbox(key=prefix + "mode").set_value("zero_shot")
    at.selectbox(key=prefix + "user_vector").set_value("recency_mean")
    at.number_input(key=prefix + "recency_decay").set_value(1.0).run()
    assert not at.exception, at.exception
    assert not at.button(key="train_start").disabled and "Not offered on this data:" not in _texts(at)


def test_the_demo_offers_every_model_and_both_splits(ws_with_plays: Path) -> None:
    at = _train_page()
    assert at.selectbox(key="train_family").value == "bert4rec"
    assert not [o for o in at.selectbox(key="train_family").options if "not offered" in o]
    assert at.selectbox(key="train_split").options == ["leave_one_out", "temporal"]
    at.session_state["train_estimate"].join(600)  # BERT4Rec's time is being measured: let the thread end here
