"""One conformance suite over every registered model family (as implicit's shared test mixin, scikit-learn's
`check_estimator`): a new family passes it or does not ship.

Families come from the registry, never a hand-written list. The data plants an answer every family must find:
two clusters of items, every user of cluster A has its hub item 0 early in their history (so it is the most
popular item, co-occurs with every A item, sits among them in time and shares their text); given every other A
item, each family ranks item 0 above the whole of cluster B. Each declared capability is checked against what the model does, and
each undeclared one must be refused with a ModelError (or be visibly absent), never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

import recsys_core.models  # noqa: F401  registers every family
from recsys_core.data.dataset import build_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.errors import ConfigError, ModelError
from recsys_core.models.base import FAMILIES, Capabilities, capabilities_of, load_model
from recsys_core.models.settings import allowed, build_config, flat_fields, flatten_config
from recsys_core.recommend.topk import similar_items

FAMILY_NAMES = sorted(FAMILIES)
A, B = list(range(10)), list(range(10, 20))  # item ids by cluster; 0 is cluster A's hub
HUB = 0
# Small, quick versions of whatever settings a family has (a name it lacks is skipped): the suite stays
# family-agnostic, and a new family with these names trains in seconds.
QUICK = {"train.epochs": 25, "train.batch_size": 32, "train.lr": 5e-3, "train.patience": 0, "train.device": "cpu",
         "train.eval_every": 1, "hidden": 32, "heads": 2, "layers": 1, "max_len": 12, "dropout": 0.0,
         "embedding_dim": 8, "k": 10,
         "parts": "bert4rec@hidden=32;heads=2;layers=1;max_len=12 + sasrec@hidden=16;heads=1;layers=1;max_len=12"}
TEXTS = {"A": "Space rocket film about astronauts and a mission to the stars",
         "B": "Home cooking show about kitchen recipes, bread and soup"}


def _frame(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for user in range(240):
        cluster = A if user % 3 else B  # two thirds in A: its hub is the most popular item overall
        history = list(rng.choice(cluster[1:], size=5, replace=False))
        history.insert(int(rng.integers(0, 4)), cluster[0])  # early enough to stay in training, not held out
        for item in history:
            rows.append((f"u{user}", f"i{item}", t))
            t += 1
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    titles = [TEXTS["A" if i in A else "B"] + (" (the original)" if i in (A[0], B[0]) else f", part {i}")
              for i in A + B]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in A + B], "title": titles})
    return frame, items


@pytest.fixture(scope="module")
def data():
    frame, items = _frame()
    ds = build_dataset(frame, name="planted", items=items)
    return ds, leave_one_out(ds, seed=0)


def _quick(family: str) -> dict:
    names = {name for name, _ in flat_fields(FAMILIES[family].config_class)}
    return {k: v for k, v in QUICK.items() if k in names}


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    """Each family fitted once on the planted data, and its saved folder."""
    ds, split = data
    out = {}
    for family in FAMILY_NAMES:
        cls = FAMILIES[family]
        model = cls(build_config(cls.config_class, _quick(family))).fit(ds, split=split)
        out[family] = (model, model.save(tmp_path_factory.mktemp(family) / "model"))
    return out


def _index(ds, ids) -> np.ndarray:
    lookup = {str(i): k for k, i in enumerate(ds.item_ids)}
    return np.array([lookup[f"i{i}"] for i in ids])


def test_the_registry_holds_families_that_describe_themselves() -> None:
    assert len(FAMILY_NAMES) >= 2
    for family, cls in FAMILIES.items():
        assert cls.family == family and cls.description.split(":")[0].strip(), family
        assert isinstance(capabilities_of(family), Capabilities)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_scores_have_the_catalogue_shape_and_rank_the_planted_hub_first(data, fitted, family: str) -> None:
    ds, _ = data
    model, _ = fitted[family]
    history = _index(ds, A[1:])
    scores = model.score([history, np.array([], dtype=np.int64)])
    assert scores.shape == (2, ds.n_items) and scores.dtype.is_floating_point and bool(scores.isfinite().all())
    assert model.score([]).shape == (0, ds.n_items)
    row = scores[0].numpy()
    hub, others = row[_index(ds, [HUB])[0]], row[_index(ds, B)]
    assert hub > others.max(), f"{family}: hub {hub:.4f} vs best of cluster B {others.max():.4f}"
    some = _index(ds, [HUB, *B[:3]])
    np.testing.assert_allclose(model.score_items([history], some).numpy(), scores[:1, some].numpy(), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(Exception, match="outside the catalogue"):
        model.score_items([history], [ds.n_items])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_embeddings_have_one_row_per_item_and_per_history(data, fitted, family: str) -> None:
    ds, _ = data
    model, _ = fitted[family]
    items = model.item_embeddings()
    users = model.user_embeddings([_index(ds, A[1:4]), _index(ds, B[1:3])])
    assert items.shape[0] == ds.n_items and users.shape[0] == 2 and np.isfinite(items).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_similar_items_work_exactly_when_declared(data, fitted, family: str) -> None:
    ds, _ = data
    model, _ = fitted[family]
    item = int(_index(ds, [A[1]])[0])
    if not model.capabilities.similar_items:
        with pytest.raises(ModelError, match="no item embeddings whose cosine means similar"):
            similar_items(model, item, 3)
        return
    near = similar_items(model, item, 5)
    assert len(near) == 5 and item not in near["item"].tolist()
    assert set(near["item_id"].head(3)) <= {f"i{i}" for i in A}, f"{family}: {near['item_id'].tolist()}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_order_aware_exactly_when_reordering_changes_the_scores(data, fitted, family: str) -> None:
    ds, _ = data
    model, _ = fitted[family]
    history = _index(ds, [1, 5, 2, 8])
    forward, backward = model.score([history, history[::-1].copy()]).numpy()
    assert (not np.allclose(forward, backward, atol=1e-6)) == model.capabilities.order_aware


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_curves_exactly_when_declared(fitted, family: str) -> None:
    model, _ = fitted[family]
    history = model.training_history()
    if model.capabilities.training_curves:
        assert history and all(math.isfinite(r["loss"]) for r in history if "loss" in r)
        assert any("metrics" in r for r in history)
    else:
        assert history == []


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_seed_ensembles_train_exactly_when_declared(data, family: str) -> None:
    """A family that declares `seed_ensemble` has a `members` setting and trains that many copies, all saved; one that
    does not has no such setting (so no page or tuner offers it)."""
    ds, split = data
    cls = FAMILIES[family]
    names = {name for name, _ in flat_fields(cls.config_class)}
    if not capabilities_of(family, {}).seed_ensemble:
        assert "members" not in names
        return
    quick = {**_quick(family), "train.epochs": 2, "members": 2}
    model = cls(build_config(cls.config_class, quick)).fit(ds, split=split)
    assert model.fit_report()["members"]["trained"] == 2
    assert any(name.startswith("member1.") for name in model.state_tensors())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_transition_prior_is_weighed_exactly_when_declared(data, family: str) -> None:
    """A family that declares `transition_prior` by default weighs it on validation and keeps its table, and declares
    nothing with transitions=off; one that does not has no such setting (so the tuner has nothing to turn off)."""
    ds, split = data
    cls = FAMILIES[family]
    if not capabilities_of(family, {}).transition_prior:
        assert "transitions" not in {name for name, _ in flat_fields(cls.config_class)}
        return
    quick = {**_quick(family), "train.epochs": 2}
    model = cls(build_config(cls.config_class, quick)).fit(ds, split=split)
    assert model.fit_report()["transitions"]["counted"] == "training and validation sequences"
    kept = any(name.startswith("transitions.") for name in model.state_tensors())  # saved with the model
    assert kept == (model.fit_report()["transitions"]["weight"] > 0)
    off = {**quick, "transitions": "off"}
    assert not capabilities_of(family, off).transition_prior
    assert "transitions" not in cls(build_config(cls.config_class, off)).fit(ds, split=split).fit_report()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_faces_work_exactly_when_declared(data, fitted, family: str) -> None:
    ds, _ = data
    model, folder = fitted[family]
    hub = int(_index(ds, [HUB])[0])
    if not model.capabilities.text:
        for call in (lambda: model.item_text(hub), lambda: model.encode_texts(["x"]), model.text_vectors,
                     lambda: model.add_items(pd.DataFrame({"item_id": ["new"], "title": ["x"]}))):
            with pytest.raises(ModelError, match=f"a {family} model cannot"):
                call()
        return
    assert model.item_text(hub).startswith(TEXTS["A"])
    vectors = model.encode_texts([model.item_text(hub)])
    assert vectors.shape == (1, model.text_vectors().shape[1])
    assert float(vectors[0] @ model.text_vectors()[hub]) == pytest.approx(1.0, abs=1e-3)
    copy = load_model(folder)  # adding items changes the catalogue: on a copy
    new = copy.add_items(pd.DataFrame({"item_id": ["new"], "title": [TEXTS["A"]]}))
    assert list(new) == [ds.n_items] and copy.score([_index(ds, A[1:])]).shape == (1, ds.n_items + 1)
    assert not copy.fits(ds)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_then_load_gives_the_same_model(data, fitted, family: str) -> None:
    ds, _ = data
    model, folder = fitted[family]
    loaded = load_model(folder)
    histories = [_index(ds, A[1:]), _index(ds, [12, 15]), np.array([], dtype=np.int64)]
    np.testing.assert_allclose(loaded.score(histories).numpy(), model.score(histories).numpy(), rtol=1e-5, atol=1e-5)
    assert loaded.family == family and loaded.capabilities == model.capabilities
    assert flatten_config(loaded.config) == flatten_config(model.config)
    assert loaded.fits(ds) and loaded.catalogue_digest() == model.catalogue_digest()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fits_tells_this_catalogue_from_another(data, fitted, family: str) -> None:
    ds, _ = data
    model, _ = fitted[family]
    frame, _ = _frame()
    assert model.fits(ds)
    renamed = build_dataset(frame.replace({"item": {"i19": "i99"}}), name="renamed")
    smaller = build_dataset(frame[frame["item"] != "i19"], name="smaller")
    for other in (renamed, smaller):
        assert not model.fits(other)
        with pytest.raises(ModelError, match="another catalogue"):
            model.check_fits(other)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_round_trips_through_flat_names_and_json(family: str) -> None:
    cls = FAMILIES[family].config_class
    config = build_config(cls, _quick(family))
    assert build_config(cls, flatten_config(config)) == config
    assert build_config(cls, json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert build_config(cls) == cls()


def _violations(field: dataclasses.Field, kind: str) -> list:
    """Values the setting's declared rules must refuse: one past each bound, an unknown choice, a wrong type."""
    rules = field.metadata.get("rules", {})
    out = [[1], None] + ([True] if kind in ("int", "float") else [])
    step = 1 if kind == "int" else 1e-6
    for rule, limit in rules.get("bounds", {}).items():
        out.append({"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[rule])
    if rules.get("choices") or rules.get("pattern"):
        out.append("no-such-choice")
    return out


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_setting_declares_its_rules_and_bad_values_are_refused_when_built(family: str) -> None:
    cls = FAMILIES[family].config_class
    undeclared = []
    for name, field in flat_fields(cls):
        kind = type(flatten_config(cls())[name]).__name__
        if kind in ("int", "float") and not allowed(field):
            undeclared.append(name)  # every number says its range, so a form and --set can refuse early
        for value in _violations(field, kind):
            with pytest.raises(ConfigError) as err:
                build_config(cls, {name: value})
            assert err.value.setting == name and f"setting '{name}'" in str(err.value), (name, value, str(err.value))
    assert undeclared == []


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_capabilities_of_a_config_are_those_of_the_configured_model(family: str) -> None:
    cls = FAMILIES[family]
    for name, field in flat_fields(cls.config_class):
        for value in field.metadata.get("rules", {}).get("choices") or ():
            config = build_config(cls.config_class, {name: value})
            assert capabilities_of(family, {name: value}) == cls(config).capabilities


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_model_refuses_data_it_cannot_train_on_exactly_as_its_capabilities_say(data, family: str) -> None:
    """`refusal(dataset)` is the face's answer before any work: none on the planted data; on the same file without
    timestamps, a refusal (with what to do) exactly for the configured models that read the order."""
    ds, _ = data
    cls = FAMILIES[family]
    model = cls(build_config(cls.config_class, _quick(family)))
    assert model.refusal(ds) is None
    frame, items = _frame()
    unordered = build_dataset(frame.drop(columns="timestamp"), name="no-timestamps", items=items)
    refused = model.refusal(unordered)
    assert (refused is not None) == model.capabilities.order_aware
    if refused is not None:
        assert "timestamp" in refused.reason + refused.fix and isinstance(refused.error(), ConfigError)
