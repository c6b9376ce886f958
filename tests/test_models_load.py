"""A model folder typed into a form or unpacked from an upload is hostile until checked: every malformed
config.json, format version, family, safetensors header or over-long name is a ModelError (or the jail's
ConfigError) with a message and what to do, never a library exception; no error names the server's folders."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import build_dataset
from recsys_core.errors import ConfigError, ModelError, RecsysError
from recsys_core.models import load_model
from recsys_core.models.ease import EASE, EASEConfig
from recsys_core.training.experiment import make_model
from recsys_core.workspace.registry import Workspace
from recsys_core.workspace.visible import visible_path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One closed-form and one sequential model, each saved once."""
    rows = [(u, (u + t) % 20, t) for u in range(30) for t in range(6)]
    ds = build_dataset(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), name="tiny")
    root = tmp_path_factory.mktemp("saved")
    sasrec = make_model("sasrec", {"hidden": 8, "layers": 1, "heads": 1, "max_len": 4, "epochs": 1})
    return {"ease": EASE(EASEConfig(l2=5.0)).fit(ds).save(root / "ease"), "sasrec": sasrec.fit(ds).save(root / "sasrec")}


def _config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "config.json").read_text())
        change(meta)
        (folder / "config.json").write_text(json.dumps(meta))
    return edit


def _header(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the safetensors header (the JSON after the 8-byte length), keeping the tensor bytes."""
    def edit(folder: Path) -> None:
        path = folder / "model.safetensors"
        data = path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        change(header)
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return edit


def _tensors(header: dict) -> list[str]:
    return [name for name in header if name != "__metadata__"]


def _offsets(header: dict, value) -> None:
    header[_tensors(header)[0]]["data_offsets"] = value


def _overlap(header: dict) -> None:
    first, *rest = _tensors(header)
    header[first]["data_offsets"] = header[rest[0]]["data_offsets"] if rest else [0, 10**6]


CASES = {
    "config is a string": _config(lambda m: m.update(config="abc")),
    "config is a number": _config(lambda m: m.update(config=3)),
    "config is a list": _config(lambda m: m.update(config=[1, 2])),
    "config is null": _config(lambda m: m.update(config=None)),
    "training section is a string": _config(lambda m: m["config"].update(train="fast")),
    "format_version is a string": _config(lambda m: m.update(format_version="2")),
    "format_version is a fraction": _config(lambda m: m.update(format_version=1.5)),
    "format_version is negative": _config(lambda m: m.update(format_version=-1)),
    "format_version from the future": _config(lambda m: m.update(format_version=10**30)),
    "format_version of 5,000 digits": lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"format_version": ', '"format_version": ' + "9" * 5000, 1)),
    "family is a list": _config(lambda m: m.update(family=["ease"])),
    "family is an object": _config(lambda m: m.update(family={"name": "ease"})),
    "family is a number": _config(lambda m: m.update(family=3)),
    "family of 300 characters": _config(lambda m: m.update(family="x" * 300)),
    "setting of 300 characters": _config(lambda m: m["config"].update({"y" * 300: 1})),
    "header offsets are strings": _header(lambda h: _offsets(h, ["0", "4"])),
    "header offsets are fractions": _header(lambda h: _offsets(h, [0.5, 4])),
    "header offsets are negative": _header(lambda h: _offsets(h, [-1, 3])),
    "header offsets beyond the file": _header(lambda h: _offsets(h, [0, 10**9])),
    "header offsets overlap": _header(_overlap),
    "header is a list": lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]"),
    "header length beyond the file": lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}"),
    "tensor name of 300 characters": _header(lambda h: h.update({"z" * 300: h.pop(_tensors(h)[0])})),
    "config.json nested 100,000 deep": lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000),
    "config.json is not UTF-8": lambda f: (f / "config.json").write_bytes(b"\xff\xfe{}"),
}


@pytest.mark.parametrize("family", ["ease", "sasrec"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_malformed_folder_is_a_model_error_with_a_hint_and_no_server_path(saved, tmp_path, family, case):
    folder = tmp_path / f"{family}-copy"
    shutil.copytree(saved[family], folder)
    CASES[case](folder)
    with pytest.raises(ModelError) as caught:
        load_model(folder)
    err = caught.value
    assert err.message and err.hint, case
    assert str(tmp_path) not in str(err), f"{case}: {err}"  # visitors never see where the server keeps files
    assert len(str(err)) < 1200, case  # a 300-character name is shortened, a 5,000-digit number not echoed


def test_a_well_formed_copy_loads(saved, tmp_path):
    """The cases above fail because of their edits: the unedited copy loads and scores."""
    for family in ("ease", "sasrec"):
        folder = shutil.copytree(saved[family], tmp_path / family)
        assert load_model(folder).score([np.array([1, 2])]).shape == (1, 20)


def test_the_errors_that_matter_say_what_is_wrong(saved, tmp_path):
    said = {}
    for case in ("config is a string", "family is a list", "header offsets are strings", "family of 300 characters"):
        folder = shutil.copytree(saved["ease"], tmp_path / case.replace(" ", "-"))
        CASES[case](folder)
        with pytest.raises(ModelError) as caught:
            load_model(folder)
        said[case] = str(caught.value)
    assert "\"config\" is a str ('abc'), expected an object of settings" in said["config is a string"]
    assert "unknown model family ['ease']" in said["family is a list"]
    assert "not a safetensors file" in said["header offsets are strings"]
    assert "(302 characters)" in said["family of 300 characters"]
    assert "file 'config-is-a-string/config.json'" in said["config is a string"]  # its folder, not the server's


def test_an_over_long_name_in_a_typed_path_is_refused_by_the_jail_and_by_the_loader(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for typed in ("x" * 300, "models/" + "y" * 300):
        with pytest.raises(ConfigError, match="a name of 300 bytes; names may have at most 255") as caught:
            ws.resolve_inside(typed, "model folder")
        assert str(ws.root) not in str(caught.value)
    with pytest.raises(ModelError, match="cannot be read \\(File name too long\\)") as caught:
        load_model(ws.root / "models" / ("y" * 300))  # a caller that skipped the jail still gets our error
    assert str(ws.root) not in str(caught.value)


def test_jail_errors_and_shown_paths_do_not_name_the_servers_folders(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    for typed in ("/etc", "../../etc", str(tmp_path)):
        with pytest.raises(RecsysError, match="outside the workspace") as caught:
            ws.resolve_inside(typed, "model folder")
        assert str(ws.root) not in str(caught.value)
    assert visible_path(ws, ws.root / "models" / "run-00001-ease") == "models/run-00001-ease"
    assert visible_path(ws, "models/abc") == "models/abc" and visible_path(ws, ws.root) == "."
    shared = tmp_path / "srv" / "shared-models"
    shared.mkdir(parents=True)
    monkeypatch.setenv("RECSYS_ALLOWED_PATHS", str(shared))
    assert visible_path(ws, shared / "m1") == "shared-models/m1"
    assert visible_path(ws, "/opt/elsewhere/m2") == "m2"
