"""Capabilities are declared by each model and match what it does; one check says whether a model fits a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ModelError
from recsys_core.models.base import FAMILIES, capabilities_of, load_model
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig

V0 = Path(__file__).parent / "fixtures" / "artifacts-v0"
FAMILY_NAMES = ["popularity", "ease", "itemknn", "bert4rec", "sasrec", "text_tower", "hybrid"]


@pytest.fixture(scope="module")
def saved() -> dict:
    return {family: load_model(V0 / family) for family in FAMILY_NAMES}


def test_every_family_declares_its_capabilities() -> None:
    assert set(FAMILY_NAMES) <= set(FAMILIES)
    for family in FAMILY_NAMES:
        caps = capabilities_of(family)
        assert isinstance(caps.order_aware, bool) and family_has_description(family)
    assert capabilities_of("text_tower").text and capabilities_of("text_tower").cold_items
    assert not capabilities_of("ease").text and not capabilities_of("popularity").item_embeddings
    assert capabilities_of("sasrec").sampled_loss and capabilities_of("bert4rec").sampled_loss
    assert not capabilities_of("ease").sampled_loss


def family_has_description(family: str) -> bool:
    return bool(FAMILIES[family].description.strip())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_order_aware_means_reordering_a_history_changes_the_scores(saved, family: str) -> None:
    model = saved[family]
    history = np.array([0, 5, 9, 17, 30, 2])
    forward, backward = model.score([history, history[::-1].copy()]).numpy()
    changed = not np.allclose(forward, backward, atol=1e-6)
    assert changed == model.capabilities.order_aware


def test_item_knn_is_order_aware_only_with_recency_weights() -> None:
    assert not ItemKNN(ItemKNNConfig()).capabilities.order_aware
    assert ItemKNN(ItemKNNConfig(recency_half_life=5)).capabilities.order_aware


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_faces_work_exactly_when_declared(saved, family: str) -> None:
    model = saved[family]
    if model.capabilities.text:
        assert model.item_text(0).startswith(model.item_text(0).split(".")[0])
        vectors = model.encode_texts([model.item_text(0)])
        assert vectors.shape == (1, model.text_vectors().shape[1])
        assert float(vectors[0] @ model.text_vectors()[0]) == pytest.approx(1.0, abs=1e-3)
    else:
        with pytest.raises(ModelError, match=f"a {family} model cannot read item texts"):
            model.item_text(0)
        with pytest.raises(ModelError, match="cannot give item text vectors"):
            model.text_vectors()


def test_one_fit_check_compares_the_whole_catalogue(saved) -> None:
    model = saved["ease"]
    ids = list(model.item_ids_)
    frame = pd.DataFrame({"user": ["u"] * len(ids), "item": ids, "timestamp": range(len(ids))})
    same = build_dataset(frame, name="same")
    assert model.fits(same)
    model.check_fits(same)
    renamed = build_dataset(frame.assign(item=[*ids[:-1], "not-an-id"]), name="renamed")
    assert renamed.n_items == model.n_items_ and not model.fits(renamed)
    with pytest.raises(ModelError, match="another catalogue than 'renamed' \\(the same number of items"):
        model.check_fits(renamed)
    smaller = build_dataset(frame.iloc[:-1], name="smaller")
    with pytest.raises(ModelError, match=f"{model.n_items_:,} items; the dataset has {model.n_items_ - 1:,}"):
        model.check_fits(smaller)
