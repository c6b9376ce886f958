"""Uploaded model zips: a good one loads and scores like the original; unsafe or broken ones are refused
with a specific message and leave nothing behind."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ModelError
from recsys_core.models.popularity import Popularity
from recsys_core.workspace.artifacts import import_model_zip


@pytest.fixture()
def saved_model(tmp_path: Path) -> tuple[Path, Popularity]:
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": ["a", "b", "b", "c", "b"], "timestamp": [1, 2, 3, 4, 5]})
    model = Popularity().fit(build_dataset(frame, name="tiny"))
    return model.save(tmp_path / "model"), model


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in folder.iterdir()}


def test_zip_of_a_wrapped_model_folder_loads_and_scores_identically(saved_model, tmp_path):
    folder, model = saved_model
    dest, loaded = import_model_zip(_zip(_folder_files(folder, "my-run/")), tmp_path / "models")
    assert (dest / "model.safetensors").is_file()
    histories = [np.array([0]), np.array([], dtype=np.int64)]
    assert np.array_equal(loaded.score(histories).numpy(), model.score(histories).numpy())


@pytest.mark.parametrize("evil", ["../escape.json", "/etc/evil.json", "a/../../b.json", "C:/x.json"])
def test_path_traversal_member_is_refused_and_nothing_written(saved_model, tmp_path, evil):
    folder, _ = saved_model
    files = _folder_files(folder) | {evil: b"{}"}
    with pytest.raises(ModelError, match="outside the archive"):
        import_model_zip(_zip(files), tmp_path / "models")
    assert not (tmp_path / "escape.json").exists()
    assert not any((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_pickle_or_code_in_a_model_zip_is_refused(saved_model, tmp_path):
    folder, _ = saved_model
    with pytest.raises(ModelError, match="not a model file"):
        import_model_zip(_zip(_folder_files(folder) | {"model.pkl": b"\x80\x04"}), tmp_path / "models")


def test_missing_weights_or_corrupt_weights_give_a_clear_error_and_no_leftovers(saved_model, tmp_path):
    folder, _ = saved_model
    files = _folder_files(folder)
    with pytest.raises(ModelError, match="missing model.safetensors"):
        import_model_zip(_zip({k: v for k, v in files.items() if k != "model.safetensors"}), tmp_path / "models")
    with pytest.raises(ModelError, match="could not be read|not usable"):
        import_model_zip(_zip(files | {"model.safetensors": b"garbage"}), tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_not_a_zip_and_no_config(tmp_path):
    with pytest.raises(ModelError, match="not a zip"):
        import_model_zip(b"hello", tmp_path)
    with pytest.raises(ModelError, match="no config.json"):
        import_model_zip(_zip({"readme.md": b"hi"}), tmp_path)
