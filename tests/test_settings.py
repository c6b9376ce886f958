"""Model settings: one TrainConfig per model config, a help line per field, flat names for forms and --set."""

from __future__ import annotations

import pytest

from recsys_core.errors import ConfigError
from recsys_core.models.settings import TrainConfig, flat_fields, help_of
from recsys_core.training.experiment import families, make_model


@pytest.mark.parametrize("family", families())
def test_every_setting_of_every_model_has_a_one_line_help(family: str) -> None:
    model = make_model(family)
    for name, field in flat_fields(type(model.config)):
        text = help_of(field)
        assert text and "\n" not in text and len(text) < 160, f"{family}.{name}: {text!r}"


def test_trainable_models_embed_one_train_config_with_their_own_defaults() -> None:
    assert make_model("bert4rec").config.train == TrainConfig(epochs=200, batch_size=32, lr=2e-3, patience=10,
                                                              eval_every=0)
    assert make_model("text_tower").config.train.max_valid_users == 300
    assert not any(name.startswith("train.") for name, _ in flat_fields(type(make_model("ease").config)))


def test_loop_settings_are_reached_by_bare_or_flat_names_and_coerced() -> None:
    model = make_model("sasrec", {"lr": "0.01", "train.epochs": "3", "hidden": "32", "amp": "false"})
    assert (model.config.train.lr, model.config.train.epochs, model.config.hidden) == (0.01, 3, 32)
    assert model.config.train.amp is False
    with pytest.raises(ConfigError, match="sasrec has no setting 'learning_rate'") as err:
        make_model("sasrec", {"learning_rate": "0.1"})
    assert "train.lr" in err.value.hint
