"""Saved baselines are plain folders (config.json + item_ids.json + model.safetensors) that load back identically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.errors import ModelError
from recsys_core.models import load_model
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.models.itemknn import ItemKNN, ItemKNNConfig
from recsys_core.models.popularity import Popularity

MODELS = [
    lambda: Popularity(),
    lambda: ItemKNN(ItemKNNConfig(k=3, shrink=2.0, recency_half_life=4.0)),
    lambda: EASE(EASEConfig(l2=7.0)),
]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    rng = np.random.default_rng(11)
    rows = [(f"user{u}", f"0{i:03d}") for u in range(40) for i in rng.choice(25, rng.integers(1, 10), replace=False)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item"]), name="io")


@pytest.mark.parametrize("make", MODELS)
def test_save_then_load_scores_identically(make, dataset, tmp_path) -> None:
    model = make().fit(dataset)
    folder = model.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "item_ids.json", "model.safetensors"]
    loaded = load_model(folder)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.item_ids_ == [str(i) for i in dataset.item_ids]  # ids keep their leading zeros
    hist = [np.array([], dtype=np.int64), np.array([0, 3, 9]), np.array([24, 24, 1])]
    assert torch.equal(loaded.score(hist), model.score(hist))
    np.testing.assert_array_equal(loaded.item_embeddings(), model.item_embeddings())


@pytest.mark.parametrize("make", MODELS)
def test_damaged_weights_are_refused(make, dataset, tmp_path) -> None:
    folder = make().fit(dataset).save(tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({name: t[:-1].contiguous() for name, t in tensors.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="retrain"):
        load_model(folder)


def test_unknown_family_is_named(dataset, tmp_path) -> None:
    folder = Popularity().fit(dataset).save(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta["family"] = "nope"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="nope"):
        load_model(folder)
