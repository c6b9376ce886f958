"""Hybrid (BERT4Rec + frozen text vectors): text transfers taste to unseen items, persistence, segment gains."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from movie_fixtures import ROMANCE, SCI_FI, movie_dataset, movie_items

from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.models.base import load_model
from recsys_core.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys_core.models.hybrid import FusedItemEncoder, Hybrid, HybridConfig, item_text_vectors, segment_gain
from recsys_core.models.settings import build_config
from recsys_core.models.text_tower import TextTower

SMALL = {"epochs": 60, "max_len": 10, "hidden": 32, "batch_size": 80, "lr": 2e-3, "patience": 0, "eval_every": 60}
HELD = 4  # the last 4 movies of each genre are only ever test targets


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only stall


def held_out_dataset():
    """Sci-fi fans and romance fans train on the first 12 movies of their genre; each user's test item is one
    of the last 4 of their genre, which no training sequence contains."""
    items, rng, rows = movie_items(), np.random.default_rng(0), []
    for u in range(80):
        base = 0 if u % 2 == 0 else len(SCI_FI)
        seq = [*(base + rng.choice(12, 6, replace=False)), base + 12 + int(rng.integers(0, HELD))]
        rows += [(f"u{u}", items["item_id"][i], 1.0, 10 * u + t) for t, i in enumerate(seq)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]), name="held", items=items)


def genre_held_items(ds, genre):
    titles = {t for t, _, _ in genre[-HELD:]}
    return np.flatnonzero(ds.items["title"].isin(titles).to_numpy())


def target_ranks(model, evalset):
    scores = model.score(evalset.histories)
    for row, history in enumerate(evalset.histories):
        scores[row, torch.from_numpy(history.astype(np.int64))] = float("-inf")
    targets = torch.from_numpy(np.concatenate(evalset.targets).astype(np.int64))
    return (scores > scores[torch.arange(len(scores)), targets][:, None]).sum(1).float() + 1


@pytest.fixture(scope="module")
def held():
    ds = held_out_dataset()
    split = leave_one_out(ds)
    hybrid = Hybrid(build_config(HybridConfig, SMALL)).fit(ds, split=split)
    bert4rec = BERT4Rec(build_config(BERT4RecConfig, SMALL)).fit(ds, split=split)
    return ds, split, hybrid, bert4rec


def test_text_lets_the_hybrid_recommend_items_it_never_trained_on(held):
    ds, split, hybrid, bert4rec = held
    sci, romance = genre_held_items(ds, SCI_FI), genre_held_items(ds, ROMANCE)
    is_sci = torch.as_tensor([int(u[1:]) % 2 == 0 for u in ds.user_ids[split.test.users]])
    scores = hybrid.score(split.test.histories)
    prefers_sci = scores[:, sci].mean(1) > scores[:, romance].mean(1)
    assert float((prefers_sci == is_sci).float().mean()) >= 0.9  # the unseen items of the user's own genre win
    assert target_ranks(hybrid, split.test).mean() < target_ranks(bert4rec, split.test).mean() - 5


def test_text_vectors_are_frozen_and_fused_into_the_item_table(held):
    ds, _, hybrid, _ = held
    module = hybrid.module_
    assert "text_vectors" not in dict(module.named_parameters())
    assert torch.allclose(module.text_vectors, item_text_vectors(ds, hybrid.config), atol=1e-5)
    fused = module.item_emb.weight[1:ds.n_items + 1] + module.text_proj(module.text_vectors)
    assert torch.allclose(torch.from_numpy(hybrid.item_embeddings()), fused.detach(), atol=1e-6)


def test_save_load_gives_identical_scores(held, tmp_path):
    _, split, hybrid, _ = held
    hybrid.save(tmp_path / "h")
    loaded = load_model(tmp_path / "h")
    assert isinstance(loaded, Hybrid)
    assert not [p for p in tmp_path.rglob("*") if p.suffix in {".bin", ".pt", ".pkl", ".pickle"}]
    assert torch.equal(loaded.score(split.test.histories), hybrid.score(split.test.histories))


def test_text_vectors_from_a_saved_text_tower(tmp_path):
    ds = movie_dataset()
    tower = TextTower().fit(ds)
    tower.save(tmp_path / "tower")
    wider = movie_dataset(n_users=41)  # different users, same items
    vectors = item_text_vectors(wider, HybridConfig(text_tower_dir=str(tmp_path / "tower")))
    position = {item_id: k for k, item_id in enumerate(tower.item_ids_)}
    expected = tower.item_vectors_[[position[i] for i in wider.items["item_id"]]]
    assert torch.allclose(vectors, expected)


def test_segment_gain_compares_the_two_models_per_segment(held):
    _, split, hybrid, bert4rec = held
    table = segment_gain(hybrid, bert4rec, split)
    assert set(table["kind"]) == {"history segment", "target popularity"}
    for _, rows in table.groupby("kind"):
        assert rows["users"].sum() == len(split.test)
    filled = table.dropna(subset=["gain"])
    assert len(filled) and np.allclose(filled["gain"], filled["hybrid"] - filled["bert4rec"])


def test_text_dropout_only_acts_in_training():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(30, 16), dim=-1)
    module = FusedItemEncoder(30, HybridConfig(hidden=8, heads=2, max_len=6, text_dropout=0.5), False, text)
    full = module.item_emb.weight[1:31] + module.text_proj(text)
    module.train()
    dropped = module.item_weights()
    id_only = torch.isclose(dropped, module.item_emb.weight[1:31]).all(dim=1)
    assert 5 < int(id_only.sum()) < 25  # about half the items lose their text part in a training step
    assert torch.allclose(dropped[~id_only], full[~id_only])
    module.eval()
    assert torch.allclose(module.item_weights(), full)
