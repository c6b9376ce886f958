"""Text tower: offline bundled MiniLM, zero-shot taste, recency, fine-tuning, cold-start items, save/load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from movie_fixtures import ROMANCE, SCI_FI, index_of, movie_dataset

from recsys_core.data.splits import leave_one_out
from recsys_core.errors import DataError, ModelError
from recsys_core.models.base import load_model
from recsys_core.models.settings import build_config
from recsys_core.models.text_tower import (
    PairSampler,
    TextTower,
    TextTowerConfig,
    bundled_model_path,
    in_batch_loss,
    load_encoder,
)
from recsys_core.progress import Progress

REPO = Path(__file__).resolve().parents[1]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only stall


@pytest.fixture(scope="module")
def ds():
    return movie_dataset()


@pytest.fixture(scope="module")
def zero_shot(ds):
    return TextTower().fit(ds)


@pytest.fixture(scope="module")
def fine_tuned(ds):
    config = build_config(TextTowerConfig, {"mode": "fine_tune", "user_vector": "history_text", "max_steps": 4, "batch_size": 8,
                                                "lr": 2e-4, "warmup_frac": 0.0, "max_history_tokens": 48, "max_item_tokens": 32})
    return TextTower(config).fit(ds)


def titles(ds, names):
    return np.array([index_of(ds, n) for n in names])


def test_bundled_model_loads_offline():
    code = ("from recsys_core.models.text_tower import load_encoder\n"
            "v = load_encoder('').encode(['Star Wars (1977)'])\n"
            "assert v.shape == (1, 384), v.shape\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_zero_shot_prefers_the_genre_of_the_history(ds, zero_shot):
    history = titles(ds, ["Alien", "Blade Runner", "The Matrix"])
    scores = zero_shot.score([history])[0]
    assert scores[index_of(ds, "Aliens")] > scores[index_of(ds, "Titanic")]
    scores[torch.from_numpy(history)] = float("-inf")
    top5 = {ds.items["title"].iat[int(i)] for i in torch.topk(scores, 5).indices}
    assert len(top5 & {t for t, _, _ in SCI_FI}) >= 4, top5


def test_newer_history_items_weigh_more(ds, zero_shot):
    sci_last = titles(ds, ["Notting Hill", "Alien"])
    romance_last = titles(ds, ["Alien", "Notting Hill"])
    scores = zero_shot.score([sci_last, romance_last])
    aliens, titanic = index_of(ds, "Aliens"), index_of(ds, "Titanic")
    assert scores[0, aliens] > scores[1, aliens]
    assert scores[1, titanic] > scores[0, titanic]
    flat = TextTower(TextTowerConfig(recency_decay=1.0))
    flat.item_vectors_, flat.n_items_ = zero_shot.item_vectors_, zero_shot.n_items_
    even = flat.score([sci_last, romance_last])
    assert torch.allclose(even[0], even[1], atol=1e-6)  # without decay the order no longer matters


def test_fine_tuning_changes_the_encoder_and_lowers_the_training_loss(ds, zero_shot, fine_tuned):
    sampler = PairSampler(ds.sequences(), fine_tuned.config.text_history_items)
    pairs = sampler.pairs(sampler.draw(np.random.default_rng(1), 32))
    log_q = sampler.log_frequency(ds.n_items)  # the corrected loss is the one fine-tuning minimises
    with torch.no_grad():
        before = float(zero_shot.pair_loss(*pairs, log_q=log_q))
        after = float(fine_tuned.pair_loss(*pairs, log_q=log_q))
    assert after < before - 0.5, (before, after)
    tuned = dict(fine_tuned.encoder.named_parameters())
    original = dict(zero_shot.encoder.named_parameters())
    top = next(n for n in tuned if ".layer.5." in n and n.endswith("query.weight"))
    embeddings = next(n for n in tuned if "word_embeddings" in n)
    assert not torch.equal(tuned[top].cpu(), original[top].cpu())
    assert torch.equal(tuned[embeddings].cpu(), original[embeddings].cpu())  # frozen below trainable_layers


def test_cold_start_item_is_recommended(ds):
    model = TextTower().fit(ds)
    new = pd.DataFrame({"item_id": ["new1", "new2"],
                        "title": ["Star Wars: Episode I - The Phantom Menace", "Bridget Jones's Diary"],
                        "year": [1999, 2001], "genres": ["Action|Adventure|Sci-Fi", "Comedy|Romance"]})
    index = model.add_items(new)
    assert list(index) == [ds.n_items, ds.n_items + 1] and model.n_items_ == ds.n_items + 2
    history = titles(ds, ["Star Wars", "The Empire Strikes Back", "Return of the Jedi"])
    scores = model.score([history])[0]
    assert scores.shape == (ds.n_items + 2,)
    scores[torch.from_numpy(history)] = float("-inf")
    assert int(index[0]) in torch.topk(scores, 3).indices.tolist()
    assert scores[index[0]] > scores[index[1]]
    assert model.item_ids_[-2:] == ["new1", "new2"]


def test_cold_start_items_can_be_re_added_without_duplicates(ds):
    model = TextTower().fit(ds)
    row = ds.items.iloc[[0]]
    assert list(model.add_items(row)) == [0] and model.n_items_ == ds.n_items


def no_pickles(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]


def test_save_load_zero_shot_gives_identical_scores(ds, zero_shot, tmp_path):
    histories = [titles(ds, ["Alien", "Titanic"]), titles(ds, [t for t, _, _ in ROMANCE[:5]]), np.zeros(0, np.int64)]
    zero_shot.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, TextTower) and not no_pickles(tmp_path)
    assert not (tmp_path / "m" / "encoder").exists()  # the bundled encoder is not copied
    assert torch.equal(loaded.score(histories), zero_shot.score(histories))


def test_save_load_fine_tuned_keeps_the_encoder(ds, fine_tuned, tmp_path):
    histories = [titles(ds, ["Alien", "Titanic"]), titles(ds, [t for t, _, _ in SCI_FI[:5]])]
    fine_tuned.save(tmp_path / "m")
    encoder_dir = tmp_path / "m" / "encoder"
    assert (encoder_dir / "model.safetensors").is_file() and (encoder_dir / "modules.json").is_file()
    assert not no_pickles(tmp_path)
    loaded = load_model(tmp_path / "m")
    assert loaded.user_recipe_ == "history_text" and loaded.fine_tuned_
    assert torch.allclose(loaded.score(histories), fine_tuned.score(histories), atol=1e-5)
    assert torch.equal(torch.from_numpy(loaded.item_embeddings()), fine_tuned.item_vectors_)


def test_custom_model_path_gives_the_same_model(ds, zero_shot):
    custom = TextTower(TextTowerConfig(model_name=str(bundled_model_path()))).fit(ds)
    histories = [titles(ds, ["Alien", "Gattaca"])]
    assert torch.allclose(custom.score(histories), zero_shot.score(histories), atol=1e-5)


def test_unusable_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load sentence encoder"):
        load_encoder(str(tmp_path))


def test_fine_tune_with_validation_picks_a_user_recipe(ds):
    split = leave_one_out(ds)
    config = build_config(TextTowerConfig, {"mode": "fine_tune", "max_steps": 1, "batch_size": 4, "eval_every": 0, "eval_steps": 1,
                                                "max_valid_users": 20, "max_history_tokens": 32, "max_item_tokens": 32})
    model = TextTower(config).fit(ds, split=split)
    assert set(model.recipe_scores_) == {"recency_mean", "history_text"}
    assert model.user_recipe_ == max(model.recipe_scores_, key=model.recipe_scores_.get)
    assert [r.get("metrics", {}).keys() >= {"ndcg@10"} for r in model.train_history_] == [True]


def test_in_batch_loss_ignores_duplicate_targets_and_uniform_corrections():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    targets = torch.tensor([0, 1, 2, 3])
    plain = in_batch_loss(q, d, targets, 20.0)
    assert torch.allclose(in_batch_loss(q, d, targets, 20.0, torch.full((4,), -3.0)), plain)  # a constant shift
    # Two pairs with the same target: neither doc counts as a negative for the other query.
    dup = in_batch_loss(q[:2], d[:2], torch.tensor([5, 5]), 20.0)
    assert torch.allclose(dup, torch.tensor(0.0), atol=1e-6)


def test_cancelled_fine_tune_still_leaves_a_usable_model(ds):
    progress = Progress()
    progress.cancel()
    model = TextTower(build_config(TextTowerConfig, {"mode": "fine_tune", "max_steps": 50})).fit(ds, progress=progress)
    assert model.train_history_ == []
    assert model.score([titles(ds, ["Alien"])]).shape == (1, ds.n_items)


def test_history_outside_the_catalogue_is_a_clear_error(ds, zero_shot):
    with pytest.raises(DataError, match="outside the catalogue"):
        zero_shot.score([np.array([0, ds.n_items + 5])])
