"""A loaded model maps its weights from model.safetensors (copy-on-write) instead of reading them: processes that
load one model share its pages, a write gives the writer private pages and never reaches the file, a file system
without mmap is read instead, and a damaged file is still a ModelError naming its folder and file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.errors import ModelError
from recsys_core.models import base, load_model
from recsys_core.models.base import map_tensors
from recsys_core.models.ease import EASE
from recsys_core.models.sasrec import SASRec
from recsys_core.models.settings import build_config

HISTORIES = [np.array([0, 3, 9]), np.array([700, 5, 1199]), np.array([42])]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """1,200 items (three EASE column blocks), each user's items in time order."""
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{i}", t) for u in range(300) for t, i in enumerate(rng.choice(1200, 12, replace=False))]
    rows += [("all", f"i{i}", 100 + i) for i in range(1200)]
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="mmap")


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory) -> dict:
    """family -> (the fitted model, its saved folder)."""
    sasrec = SASRec(build_config(SASRec.config_class, {"hidden": 16, "layers": 1, "max_len": 12,
                                                       "train.batch_size": 32, "train.max_steps": 2}))
    out = {}
    for model in (EASE(), sasrec):
        model.fit(dataset)
        out[model.family] = (model, model.save(tmp_path_factory.mktemp(model.family) / "model"))
    return out


def _backing_file(tensor: torch.Tensor) -> str:
    """The file whose mapping holds `tensor`'s first byte ("" or "[heap]" for private memory), from /proc/self/maps."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) == 6 else ""
    return ""


def _largest(model) -> torch.Tensor:
    return max(model.state_tensors().values(), key=lambda t: t.numel())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("family", ["ease", "sasrec"])
def test_a_loaded_model_scores_as_saved_from_weights_mapped_from_its_file(saved, family) -> None:
    model, folder = saved[family]
    loaded = load_model(folder)
    assert torch.equal(loaded.score(HISTORIES), model.score(HISTORIES))
    weights = loaded.state_tensors()
    assert weights.keys() == model.state_tensors().keys()
    for name, tensor in weights.items():  # every tensor, the large ones above all, lives in the file's pages
        assert _backing_file(tensor) == str(folder / "model.safetensors"), name


@pytest.mark.parametrize("family", ["ease", "sasrec"])
def test_writing_a_loaded_weight_changes_this_model_only_never_the_file(saved, family) -> None:
    model, folder = saved[family]
    before = _digest(folder / "model.safetensors")
    loaded, other = load_model(folder), load_model(folder)
    with torch.no_grad():
        _largest(loaded).add_(1.0)  # what fine-tuning a loaded model does to it, in place
    assert _digest(folder / "model.safetensors") == before
    assert not torch.equal(loaded.score(HISTORIES), model.score(HISTORIES))
    assert torch.equal(other.score(HISTORIES), model.score(HISTORIES))  # a second load keeps the file's values
    assert torch.equal(load_model(folder).score(HISTORIES), model.score(HISTORIES))


def test_a_file_system_without_mmap_is_read_instead(saved, monkeypatch) -> None:
    model, folder = saved["ease"]

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap(2) says on a file system that cannot map

    monkeypatch.setattr(base.np, "memmap", refuse)
    loaded = load_model(folder)
    assert torch.equal(loaded.score(HISTORIES), model.score(HISTORIES))
    assert _backing_file(_largest(loaded)) != str(folder / "model.safetensors")  # private memory, as a read gives


def test_saving_over_a_mapped_model_leaves_it_whole(saved, tmp_path) -> None:
    model, _ = saved["ease"]
    copy = tmp_path / "model"
    model.save(copy)
    loaded = load_model(copy)
    EASE().fit(build_dataset(pd.DataFrame([("a", "x"), ("b", "y")], columns=["user", "item"]), name="tiny")).save(copy)
    assert torch.equal(loaded.score(HISTORIES), model.score(HISTORIES))  # the old file's pages, not the new one's
    assert load_model(copy).n_items_ == 2
    assert sorted(p.name for p in copy.iterdir()) == ["config.json", "item_ids.json", "model.safetensors"]


def _rewrite(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(edit(json.loads(raw[8:8 + n]))).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])


def test_an_offset_past_the_end_is_a_model_error_naming_folder_and_file(saved, tmp_path) -> None:
    _, folder = saved["ease"]
    copy = tmp_path / "damaged"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    _rewrite(copy / "model.safetensors", lambda h: {**h, "B.2": {**h["B.2"], "data_offsets": [0, 10**12]}})
    with pytest.raises(ModelError, match="not a safetensors file") as caught:
        load_model(copy)
    assert caught.value.file == "damaged/model.safetensors"
    with pytest.raises(ModelError, match="offsets 0..1,000,000,000,000") as caught:  # the mapper's own check
        map_tensors(copy / "model.safetensors")
    assert caught.value.file == "damaged/model.safetensors" and "re-export" in caught.value.hint


@pytest.mark.parametrize("edit, words", [
    (lambda h: {**h, "b": {**h["b"], "data_offsets": [0, 8]}}, "overlap"),
    (lambda h: {**h, "a": {**h["a"], "shape": [4, 4]}}, "do not hold"),
    (lambda h: {**h, "a": {**h["a"], "dtype": "PICKLE"}}, "no dtype"),
    (lambda h: {**h, "a": {**h["a"], "shape": [True, 3]}}, "no valid shape"),
    (lambda h: [h], "not an object"),
], ids=["overlap", "size", "dtype", "bool_shape", "list"])
def test_the_mapper_checks_the_header_itself(tmp_path, edit, words) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4, 3), "b": torch.ones(2)}, str(path))
    _rewrite(path, edit)
    with pytest.raises(ModelError, match=words):
        map_tensors(path)


def test_a_misaligned_tensor_is_copied_not_misread(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.arange(4, dtype=torch.float32), "b": torch.arange(3, dtype=torch.uint8)}, str(path))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    data = raw[8 + n:]  # a (16 bytes) then b (3): put b first, so a starts at byte 3
    header = {"b": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "a": {"dtype": "F32", "shape": [4], "data_offsets": [3, 19]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-aligned, as the library writes it
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[16:19] + data[:16])
    tensors = map_tensors(path)
    assert torch.equal(tensors["a"], torch.arange(4, dtype=torch.float32))
    assert torch.equal(tensors["b"], torch.arange(3, dtype=torch.uint8))
