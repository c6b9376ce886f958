"""Saved baselines are plain folders (config.json + item_ids.json + model.safetensors) that load back identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
from recsys_core.models.settings import FORMAT_VERSION

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


# ---- format versions: folders saved by older versions keep loading -----------------------------------

V0 = Path(__file__).parent / "fixtures" / "artifacts-v0"
V0_FAMILIES = ["popularity", "ease", "itemknn", "bert4rec", "sasrec", "text_tower", "hybrid"]


@pytest.mark.parametrize("family", V0_FAMILIES)
def test_a_folder_saved_before_format_versions_loads_and_scores_as_it_did(family, tmp_path) -> None:
    meta = json.loads((V0 / family / "config.json").read_text())
    assert "format_version" not in meta  # written by the old code, flat loop settings
    reference = json.loads((V0 / "reference_scores.json").read_text())
    model = load_model(V0 / family)
    index = {item_id: i for i, item_id in enumerate(model.item_ids_)}
    histories = [np.array([index[i] for i in h]) for h in reference["histories"]]
    np.testing.assert_allclose(model.score(histories).numpy(), reference["scores"][family], atol=1e-5)
    resaved = json.loads((model.save(tmp_path / "m") / "config.json").read_text())
    assert resaved["format_version"] == FORMAT_VERSION and resaved["catalogue"] == model.catalogue_digest()
    if "lr" in meta["config"]:  # the loop's settings moved under `train`, with their values
        assert resaved["config"]["train"]["lr"] == meta["config"]["lr"] and "lr" not in resaved["config"]
    np.testing.assert_allclose(load_model(tmp_path / "m").score(histories).numpy(), reference["scores"][family],
                               atol=1e-5)


def test_text_tower_v0_spellings_are_renamed() -> None:
    old = json.loads((V0 / "text_tower" / "config.json").read_text())["config"]
    config = load_model(V0 / "text_tower").config
    assert config.train.warmup_frac == old["warmup_fraction"] and config.train.max_valid_users == old["valid_users"]
    # v0 "eval_every" counted fine-tuning steps: it is train.eval_steps now (format 2)
    assert (config.train.eval_every, config.train.eval_steps) == (0, old["eval_every"])
    assert config.train.max_steps == old["max_steps"]


def _edited(tmp_path: Path, family: str, edit) -> Path:
    folder = tmp_path / family
    shutil.copytree(V0 / family, folder)
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_a_folder_from_a_newer_version_or_with_unknown_settings_is_refused_clearly(tmp_path) -> None:
    newer = _edited(tmp_path, "ease", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelError, match="saved by a newer version"):
        load_model(newer)
    unknown = _edited(tmp_path, "bert4rec", lambda m: m["config"].update(wormholes=3))
    with pytest.raises(ModelError, match="no setting 'wormholes'"):
        load_model(unknown)
    no_count = _edited(tmp_path, "popularity", lambda m: m.pop("n_items"))
    with pytest.raises(ModelError, match="no valid n_items"):
        load_model(no_count)


def test_item_ids_swapped_after_saving_are_caught(dataset, tmp_path) -> None:
    folder = Popularity().fit(dataset).save(tmp_path / "m")
    ids = json.loads((folder / "item_ids.json").read_text())
    (folder / "item_ids.json").write_text(json.dumps(ids[::-1]))
    with pytest.raises(ModelError, match="not the catalogue this model was saved with"):
        load_model(folder)
