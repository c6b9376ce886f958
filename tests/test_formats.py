"""Saved files read through their libraries: model weights' headers by `safetensors.safe_open`, which keeps
refusing what a hostile upload could lie about while accepting every dtype the library and torch know."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ModelError
from recsys_core.models import load_model
from recsys_core.models.base import _tensor_header
from recsys_core.models.popularity import Popularity


@pytest.fixture()
def weights(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4, 3), "b": torch.ones(2)}, str(path))
    return path


def _rewrite(path: Path, edit) -> None:
    """Apply `edit` to the parsed header and write the file back with the same tensor bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(edit(json.loads(raw[8:8 + n]))).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])


def test_the_header_gives_dtypes_and_shapes(weights) -> None:
    assert _tensor_header(weights) == {"a": (torch.float32, [4, 3]), "b": (torch.float32, [2])}


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64,
                                   torch.bfloat16, torch.complex64, torch.bool])
def test_every_dtype_the_library_knows_is_read(tmp_path, dtype) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3, 2, dtype=dtype), "s": torch.zeros((), dtype=dtype)}, str(path))
    assert _tensor_header(path) == {"w": (dtype, [3, 2]), "s": (dtype, [])}


def test_a_model_saved_with_whole_number_counts_in_uint32_loads(tmp_path) -> None:
    rows = [("u1", "i1"), ("u1", "i2"), ("u2", "i2")]
    model = Popularity().fit(build_dataset(pd.DataFrame(rows, columns=["user", "item"]), name="t"))
    folder = model.save(tmp_path / "m")
    counts = load_file(str(folder / "model.safetensors"))["counts"]
    save_file({"counts": counts.to(torch.uint32)}, str(folder / "model.safetensors"))
    loaded = load_model(folder)
    assert torch.equal(loaded.score([np.array([0])]), model.score([np.array([0])]))


@pytest.mark.parametrize("edit", [
    lambda h: {**h, "a": {**h["a"], "data_offsets": ["0", "48"]}},  # offsets as text
    lambda h: {**h, "b": {**h["b"], "data_offsets": [48, 9_000_000]}},  # past the end of the file
    lambda h: {**h, "b": {**h["b"], "data_offsets": [0, 8]}},  # overlapping another tensor
    lambda h: {**h, "a": {**h["a"], "shape": [4, 4]}},  # more bytes than its offsets hold
    lambda h: {**h, "a": {**h["a"], "shape": [-4, -3]}},
    lambda h: {**h, "a": {**h["a"], "shape": [2**40, 2**40, 2**40]}},  # overflows a size
    lambda h: {**h, "a": {**h["a"], "dtype": "PICKLE"}},
    lambda h: [h],
], ids=["text_offsets", "past_end", "overlap", "shape_unlike_size", "negative_shape", "overflow", "dtype", "list"])
def test_a_lying_header_is_a_model_error(weights, edit) -> None:
    _rewrite(weights, edit)
    with pytest.raises(ModelError, match="not a safetensors file") as caught:
        _tensor_header(weights)
    assert "re-export" in caught.value.hint
    assert caught.value.file == f"{weights.parent.name}/{weights.name}"  # its folder and name, not the server's path


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-16],  # truncated
    lambda raw: (len(raw) + 10).to_bytes(8, "little") + raw[8:],  # header longer than the file
    lambda raw: (2**62).to_bytes(8, "little") + raw[8:],  # header length far beyond any limit
    lambda raw: raw[:5],
    lambda raw: b"",
], ids=["truncated", "header_past_end", "header_length_lie", "shorter_than_length", "empty"])
def test_a_damaged_file_is_a_model_error(weights, damage) -> None:
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelError, match="not a safetensors file"):
        _tensor_header(weights)


def test_a_header_over_100_mb_is_refused_though_the_file_holds_it(weights) -> None:
    with open(weights, "wb") as f:  # sparse: the length is true, the file really is that long
        f.write((100_000_001).to_bytes(8, "little"))
        f.truncate(8 + 100_000_001)
    with pytest.raises(ModelError, match="header too large"):
        _tensor_header(weights)


def test_a_dtype_torch_packs_is_refused_by_name(weights) -> None:
    _rewrite(weights, lambda h: {"a": {"dtype": "F4", "shape": [112], "data_offsets": [0, 56]}})
    with pytest.raises(ModelError, match="F4 weights") as caught:
        _tensor_header(weights)
    assert "float32" in caught.value.hint
