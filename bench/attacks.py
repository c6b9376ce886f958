"""The project's own attack set, run against the engine functions the pages call; counts what happened.

    python bench/attacks.py                 # every case, one fresh child process each
    python bench/attacks.py --case NAME     # one case in this process (prints its JSON line)
    python bench/attacks.py --only TEXT --update   # rerun some cases into today's result file

Each case plays a hostile or unlucky visitor (a file, a zip, a form path, a model folder, an LLM URL, a
title, a raw HTTP client) and ends as one of:

- ok:             a legal input was accepted and read correctly;
- clear_error:    the project refused it with its own error, or handled it safely (no secret sent, escaped);
- misleading:     the project refused it with its own error, but the message names the wrong cause;
- traceback:      any other exception reached the caller (a page would show a Python traceback);
- crash:          the process running the case died (a server would lose every session);
- hang_or_memory: the case took longer than HANG_S, or the process playing the server peaked above
                  SERVER_RSS_MB (a limited parse child is a separate process with its own limit);
- data_loss:      data the workspace held was lost or overwritten;
- hole:           the attack worked (a file outside the workspace was read or written, a secret leaked, HTML
                  survived into a chart label, disk was left behind, a door opened without the password).

Heavy inputs are built first in their own process (`--build NAME`), so the case's process -- the one playing
the server -- pays only for what the project does with them; its peak RSS and wall time are recorded per case.
Prints and writes `{tried, ok, clear_error, misleading, traceback, crash, hang_or_memory, data_loss, hole,
cases}` to bench/results/attacks-<YYYYMMDD>.json. The goal is zeros except `tried`, `ok` and `clear_error`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOWUP_MB = 1024  # memory a case may add to the process playing the server
SERVER_RSS_MB = 1536  # the bound on the server's peak RSS for any upload
HANG_S = 180.0
OUTCOMES = ("ok", "clear_error", "misleading", "traceback", "crash", "hang_or_memory", "data_loss", "hole")
CASES: dict[str, Callable[[Path], str]] = {}
BUILDERS: dict[str, Callable[[Path], None]] = {}
SAID: list[str] = []  # the project's refusals a case met, for its detail line
HTML_TITLES = ['<a href="https://evil.example/">CLICKME</a>',
               '<span style="position:fixed;top:0;left:0;width:100%;height:100%;background:red">COVER</span>',
               "<img src=x onerror=alert(1)>", "<b>bold</b> & <i>italic</i>"]


def case(fn: Callable[[Path], str]) -> Callable[[Path], str]:
    CASES[fn.__name__] = fn
    return fn


def built_by(builder: Callable[[Path], None]) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    """Registers a case whose input `builder` writes into its folder first, in another process."""
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        BUILDERS[fn.__name__] = builder
        return case(fn)
    return register


class Hole(Exception):
    """The attack worked."""


class Misleading(Exception):
    """Refused with the project's error, but the message names another cause."""


class DataLoss(Exception):
    """Data the workspace held was lost or overwritten."""


# ---- builders (also used by tests/test_attacks.py) ----------------------------------------------------


def nested_jsonl(depth: int = 20_000) -> bytes:
    """One line of `depth` nested objects: segfaults pyarrow.json.read_json in the process that parses it."""
    return b'{"a":' * depth + b"1" + b"}" * depth + b"\n"


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tiny_dataset(titles: list[str] | None = None):
    """Twelve users over six items, with timestamps; item titles from `titles` when given."""
    import pandas as pd

    from recsys_core.data.dataset import build_dataset

    rows = [(f"u{u}", f"i{(u + k) % 6}", 4.0, 100 * u + k) for u in range(12) for k in range(4)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    titles = titles or [f"Movie {i}" for i in range(6)]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": [titles[i % len(titles)] for i in range(6)],
                          "genres": ["<b>Drama</b>|Comedy"] * 6})
    return build_dataset(frame, name="attack", items=items)


def saved_model(folder: Path, family: str = "sasrec") -> Path:
    """A real trained model folder (one tiny epoch) to tamper with."""
    from recsys_core.training.experiment import make_model

    overrides = {"epochs": 1, "hidden": 8, "max_len": 8, "layers": 1, "heads": 1} if family == "sasrec" else {}
    return make_model(family, overrides).fit(tiny_dataset()).save(folder)


def _edit_config(folder: Path, edit: Callable[[dict], object]) -> Path:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def crafted_model_folders(tmp: Path) -> dict[str, Path]:
    """Model folders a visitor could craft: each must load as a ModelError, with no big allocation."""
    import torch
    from safetensors.torch import save_file

    def fresh(name: str, family: str = "sasrec") -> Path:
        return saved_model(tmp / name, family)

    out = {
        "missing_n_items": _edit_config(fresh("a"), lambda m: m.pop("n_items")),
        "n_items_text": _edit_config(fresh("b"), lambda m: m.update(n_items="6")),
        "max_len_16m": _edit_config(fresh("c"), lambda m: m["config"].update(max_len=16_000_000)),
        "max_len_mismatch": _edit_config(fresh("d"), lambda m: m["config"].update(max_len=60_000)),
        "hidden_mismatch": _edit_config(fresh("e"), lambda m: m["config"].update(hidden=4096)),
        # Within the size limits, but ~1 GB of positional embeddings if built: the meta dry run must stop it.
        "sizes_unlike_weights": _edit_config(fresh("o"), lambda m: m["config"].update(max_len=60_000, hidden=4096)),
        "unknown_family": _edit_config(fresh("f"), lambda m: m.update(family="os.system")),
        "config_is_a_list": fresh("g"),
        "item_ids_not_a_list": fresh("h"),
        "pickle_as_safetensors": fresh("i"),
        "header_length_lie": fresh("j"),
        "truncated_weights": fresh("k"),
        "weights_of_another_shape": fresh("l"),
        "nested_config_json": fresh("m"),
        "ease_wrong_shape": fresh("n", "ease"),
        "config_is_a_string": _edit_config(fresh("p"), lambda m: m.update(config="hidden=8")),
        "config_is_a_number": _edit_config(fresh("q"), lambda m: m.update(config=5)),
        "format_version_text": _edit_config(fresh("r"), lambda m: m.update(format_version="two")),
        "format_version_future": _edit_config(fresh("s"), lambda m: m.update(format_version=999)),
        "family_a_number": _edit_config(fresh("t"), lambda m: m.update(family=7)),
        "safetensors_string_offsets": fresh("u"),
    }
    (out["config_is_a_list"] / "config.json").write_text("[1, 2, 3]")
    (out["item_ids_not_a_list"] / "item_ids.json").write_text('{"0": "i0"}')
    (out["pickle_as_safetensors"] / "model.safetensors").write_bytes(pickle.dumps({"w": list(range(100))}))
    weights = out["header_length_lie"] / "model.safetensors"
    weights.write_bytes((2**62).to_bytes(8, "little") + weights.read_bytes()[8:])
    weights = out["truncated_weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    save_file({"module.items.weight": torch.zeros(3, 3)}, str(out["weights_of_another_shape"] / "model.safetensors"))
    (out["nested_config_json"] / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    save_file({"B": torch.zeros(2, 2)}, str(out["ease_wrong_shape"] / "model.safetensors"))
    header = json.dumps({"module.items.weight": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}).encode()
    (out["safetensors_string_offsets"] / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                                                            + bytes(8))
    return out


def _workspace(tmp: Path):
    from recsys_core.workspace.registry import Workspace

    return Workspace(tmp / "workspace")


def _expect_refusal(fn: Callable[[], object], *, words: str = "") -> str:
    """clear_error when `fn` raises the project's error (mentioning `words`); a hole when it succeeds."""
    from recsys_core.errors import RecsysError

    try:
        fn()
    except RecsysError as err:
        if words and not any(w.lower() in str(err).lower() for w in words.split("|")):
            raise Misleading(f"expected {words!r}: {err.message} {err.hint or ''}"[:300]) from err
        SAID.append(err.message)
        return "clear_error"
    raise Hole("accepted")


# ---- untrusted files -------------------------------------------------------------------------------


@case
def nested_jsonl_segfault(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(nested_jsonl(), "nested.jsonl"))


@case
def nested_json_array(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(b"[" * 200_000 + b"]" * 200_000, "nested.json"))


@case
def parquet_that_is_not_parquet(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(b"PAR1" + os.urandom(4096) + b"PAR1", "r.parquet"))


@case
def csv_giant_single_field(tmp: Path) -> str:
    """A 200 MB CSV upload whose second line is one field: parsed in the child, refused there."""
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(b"user,item\n1," + b"x" * (200 << 20) + b"\n", "field.csv"))


@case
def csv_unclosed_quote(tmp: Path) -> str:
    """An unclosed quote on line 2 swallows 8M later lines into one field."""
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(b'user,item\n"1,2\n' + b"3,4\n" * 8_000_000, "quote.csv"))


@case
def csv_quote_storm(tmp: Path) -> str:
    """Millions of doubled quotes and quoted delimiters: the sniffer and the child must both stay linear."""
    from recsys_core.data.read import read_table

    rows = b'user,item,note\n' + b'1,2,"a"",""b"",""c"""\n' * 3_000_000
    read_table(rows, "quotes.csv")  # legal CSV: reading it within the limits is the right outcome
    return "clear_error"


@case
def csv_short_rows_over_the_row_cap(tmp: Path) -> str:
    """More rows than RECSYS_MAX_ROWS (lowered to 1M here): refused before or while reading, not after."""
    from recsys_core.data.read import read_table

    os.environ["RECSYS_MAX_ROWS"] = "1000000"
    return _expect_refusal(lambda: read_table(b"u,i\n" + b"1,2\n" * 5_000_000, "rows.csv"), words="over the limit")


@case
def csv_short_rows_in_a_zip(tmp: Path) -> str:
    """Short random rows in a zip, under the expansion-ratio cap: the rows cap still holds once inflated."""
    import numpy as np

    from recsys_core.data.read import read_table

    os.environ["RECSYS_MAX_ROWS"] = "1000000"
    pairs = np.random.default_rng(0).integers(0, 10**6, size=(1_500_000, 2))
    body = "\n".join(f"{u},{i}" for u, i in pairs.tolist()).encode() + b"\n"
    return _expect_refusal(lambda: read_table(zip_of({"ratings.csv": b"u,i\n" + body}), "rows.zip"),
                           words="over the limit")


@case
def zip_expansion_ratio(tmp: Path) -> str:
    """A ~60 KB zip of 40 MB of short rows: the reader must refuse the ratio or stay within memory."""
    from recsys_core.data.read import read_table

    data = zip_of({"ratings.csv": b"user,item\n" + b"1,2\n" * 10_000_000})
    read_table(data, "bomb.zip")  # the project's error is a clear_error (the runner classifies it)
    raise Hole(f"a {len(data) // 1024} KB zip expanding {40_000_000 // len(data)}x was read without a ratio limit")


@case
def zip_path_traversal_data(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    return _expect_refusal(lambda: read_table(zip_of({"../../etc/ratings.csv": b"user,item\n1,2\n"}), "t.zip"),
                           words="unsafe member")


@case
def zip_path_traversal_model(tmp: Path) -> str:
    from recsys_core.workspace.artifacts import import_model_zip

    ws = _workspace(tmp)
    data = zip_of({"m/config.json": b"{}", "../../escaped.json": b"{}"})
    result = _expect_refusal(lambda: import_model_zip(data, ws.models_dir(), filename="t.zip"))
    if (ws.models_dir().parent.parent / "escaped.json").exists():
        raise Hole("a member was written outside the models folder")
    return result


@case
def zip_ratio_model(tmp: Path) -> str:
    from recsys_core.workspace.artifacts import import_model_zip

    ws = _workspace(tmp)
    data = zip_of({"m/config.json": b"{}", "m/model.safetensors": bytes(200 << 20)})
    return _expect_refusal(lambda: import_model_zip(data, ws.models_dir(), filename="bomb.zip"), words="expands")


# ---- the workspace jail ---------------------------------------------------------------------------


@case
def outside_paths(tmp: Path) -> str:
    ws = _workspace(tmp)
    outside = tmp / "other-workspace" / "models"
    outside.mkdir(parents=True)
    (ws.root / "link").symlink_to(outside)
    for path in ("/etc", str(outside), "../other-workspace", "link/..", "link", "~", "models/../../x", "a\x00b"):
        _expect_refusal(lambda p=path: ws.resolve_inside(p, "model folder"))
    return "clear_error"


@case
def checkpoint_dir_outside(tmp: Path) -> str:
    from recsys_core.training.experiment import run_experiment

    target = tmp / "outside-checkpoints"
    overrides = {"epochs": 1, "hidden": 8, "max_len": 8, "checkpoint_dir": str(target)}
    result = _expect_refusal(lambda: run_experiment(tiny_dataset(), "sasrec", overrides, workspace=_workspace(tmp)),
                             words="outside the workspace")
    if target.exists():
        raise Hole("a checkpoint was written outside the workspace")
    return result


@case
def text_tower_dir_outside(tmp: Path) -> str:
    from recsys_core.training.experiment import check_paths

    folder = saved_model(tmp / "elsewhere", "popularity")
    return _expect_refusal(lambda: check_paths("hybrid", {"text_tower_dir": str(folder)}, _workspace(tmp)),
                           words="outside the workspace")


@case
def llm_folder_outside(tmp: Path) -> str:
    from recsys_core.blurbs.hub import is_hub_name

    ws = _workspace(tmp)
    for source in ("/etc", "../../home", str(tmp)):
        if is_hub_name(source):
            raise Hole(f"{source!r} passes as a hub name")
        _expect_refusal(lambda s=source: ws.resolve_inside(s, "language model folder"))
    return "clear_error"


def _crafted(name: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        from recsys_core.models.base import load_model

        ws = _workspace(tmp)
        folder = crafted_model_folders(ws.models_dir())[name]
        return _expect_refusal(lambda: load_model(ws.resolve_inside(folder, "model folder")))

    run.__name__ = f"model_folder_{name}"
    return run


for _name in ("missing_n_items", "n_items_text", "max_len_16m", "max_len_mismatch", "hidden_mismatch",
              "sizes_unlike_weights",
              "unknown_family", "config_is_a_list", "item_ids_not_a_list", "pickle_as_safetensors",
              "header_length_lie", "truncated_weights", "weights_of_another_shape", "nested_config_json",
              "ease_wrong_shape", "config_is_a_string", "config_is_a_number", "format_version_text",
              "format_version_future", "family_a_number", "safetensors_string_offsets"):
    case(_crafted(_name))


# ---- LLM endpoints ---------------------------------------------------------------------------------


@case
def ssrf_key_leak(tmp: Path) -> str:
    from recsys_core.blurbs.remote import OpenAIBackend
    from recsys_core.errors import LLMError
    from tests.llm_loopback import LoopbackLLM

    with LoopbackLLM("ok", operator=False) as operator, LoopbackLLM("ok", operator=False) as visitor:
        os.environ.update(RECSYS_LLM_URL=operator.url, RECSYS_LLM_API_KEY="sk-operator-secret")
        try:
            list(OpenAIBackend.from_env(visitor.url, "m").generate([{"role": "user", "content": "hi"}]))
        except LLMError:
            pass
        list(OpenAIBackend.from_env(None, "m").generate([{"role": "user", "content": "hi"}]))
    if visitor.requests:
        raise Hole("the server sent a request to a visitor's URL")
    if operator.headers[0].get("Authorization") != "Bearer sk-operator-secret":
        raise Hole("the operator's own server no longer gets its key")  # a broken feature, counted as a hole
    return "clear_error"


@case
def llm_error_body_echo(tmp: Path) -> str:
    from recsys_core.blurbs.remote import OpenAIBackend
    from recsys_core.errors import LLMError
    from tests.llm_loopback import LoopbackLLM

    with LoopbackLLM(mode="500") as server:
        try:
            list(OpenAIBackend(server.url, "m").generate([{"role": "user", "content": "hi"}]))
        except LLMError as err:
            if "model crashed" in str(err):
                raise Hole("the remote body was echoed") from err
            return "clear_error"
    raise Hole("no error")


@case
def llm_huge_reply(tmp: Path) -> str:
    from recsys_core.blurbs.remote import OpenAIBackend
    from recsys_core.errors import LLMError
    from tests.llm_loopback import LoopbackLLM

    with LoopbackLLM("x" * (8 << 20)) as server:
        try:
            list(OpenAIBackend(server.url, "m").generate([{"role": "user", "content": "hi"}], stream=False))
        except LLMError:
            return "clear_error"
    raise Hole("an 8 MB reply was accepted")


# ---- uploads after the parse: memory in the process playing the server (issue 24, part 1) ------------


def _ingest(tmp: Path, name: str):
    """The upload path the Data page takes: the bytes as received, previewed, then loaded and saved."""
    from recsys_core.workspace.ingest import ingest_upload, preview_upload

    data = (tmp / name).read_bytes()
    preview_upload(data, name)
    return ingest_upload(_workspace(tmp), data, name, name="upload")


def _accepted_or_refused(tmp: Path, name: str, words: str = "") -> str:
    """ok when the upload loads, clear_error when refused (memory and time are judged by the runner)."""
    return _expect_refusal_or_ok(lambda: _ingest(tmp, name), words=words)


def _expect_refusal_or_ok(fn: Callable[[], object], *, words: str = "") -> str:
    from recsys_core.errors import RecsysError

    try:
        fn()
    except RecsysError as err:
        if words and not any(w.lower() in str(err).lower() for w in words.split("|")):
            raise Misleading(f"expected {words!r}: {err.message}"[:300]) from err
        SAID.append(err.message)
        return "clear_error"
    return "ok"


def _dictionary_parquet(rows: int, width: int, distinct: int) -> bytes:
    """User ids from `distinct` strings of `width` characters, dictionary-encoded: tiny on disk, gigabytes
    once every row holds its own Python string."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = pa.DictionaryArray.from_arrays(pa.array(np.arange(rows, dtype=np.int32) % distinct),
                                           pa.array([f"{k:06d}" + "u" * width for k in range(distinct)]))
    items = pa.DictionaryArray.from_arrays(pa.array(np.arange(rows, dtype=np.int32) % 1000),
                                           pa.array([f"i{k}" for k in range(1000)]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"user": users, "item": items}), buf, compression="zstd")
    return buf.getvalue()


def _build_parquet_1m_rows(tmp: Path) -> None:
    (tmp / "dict.parquet").write_bytes(_dictionary_parquet(1_000_000, 8192, 1))


def _build_parquet_2m_rows(tmp: Path) -> None:
    (tmp / "dict.parquet").write_bytes(_dictionary_parquet(2_000_000, 8192, 200))


@built_by(_build_parquet_1m_rows)
def parquet_dictionary_ids_87kb_8gb_as_strings(tmp: Path) -> str:
    return _accepted_or_refused(tmp, "dict.parquet")


@built_by(_build_parquet_2m_rows)
def parquet_dictionary_ids_217kb_16gb_as_strings(tmp: Path) -> str:
    return _accepted_or_refused(tmp, "dict.parquet")


def _build_zip_of_valid_rows(tmp: Path) -> None:
    """~46 M short, valid, repetitive rows in one zip member (ratio under the 100x cap), written in blocks."""
    import numpy as np

    with zipfile.ZipFile(tmp / "rows.zip", "w", zipfile.ZIP_DEFLATED) as zf, zf.open("ratings.csv", "w") as out:
        out.write(b"user,item\n")
        for start in range(0, 45_700_000, 1_000_000):
            i = np.arange(start, min(start + 1_000_000, 45_700_000))
            out.write("".join(f"{u},{v}\n" for u, v in zip((i // 40).tolist(), (i % 5000).tolist())).encode())


@built_by(_build_zip_of_valid_rows)
def zip_of_46m_valid_rows(tmp: Path) -> str:
    return _accepted_or_refused(tmp, "rows.zip")


def _build_zip_of_empty_members(tmp: Path) -> None:
    with zipfile.ZipFile(tmp / "many.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ratings.csv", b"user,item\n1,2\n")
        for k in range(1_000_000):
            zf.writestr(f"e/{k}.txt", b"")


@built_by(_build_zip_of_empty_members)
def zip_of_a_million_empty_members(tmp: Path) -> str:
    return _accepted_or_refused(tmp, "many.zip", words="members")


def _build_wide_csv(tmp: Path) -> None:
    """A 187 KB CSV (the issue's was 195 KB), small enough to be parsed in-process (under read.INLINE_TEXT_BYTES),
    of 18,000 columns."""
    header = ",".join(["user", "item"] + [f"c{k}" for k in range(17_998)])
    row = ",".join(["1"] * 18_000)
    (tmp / "wide.csv").write_text(f"{header}\n{row}\n{row}\n")


@built_by(_build_wide_csv)
def csv_187kb_of_18000_columns(tmp: Path) -> str:
    return _accepted_or_refused(tmp, "wide.csv")


def _build_model_zip_of_20m_ids(tmp: Path) -> None:
    folder = saved_model(tmp / "m", "popularity")
    with zipfile.ZipFile(tmp / "ids.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/config.json", (folder / "config.json").read_bytes())
        zf.writestr("m/model.safetensors", (folder / "model.safetensors").read_bytes())
        with zf.open("m/item_ids.json", "w") as out:
            out.write(b"[")
            for start in range(0, 20_000_000, 1_000_000):
                sep = "" if start == 0 else ","
                out.write((sep + ",".join(f'"{k}"' for k in range(start, start + 1_000_000))).encode())
            out.write(b"]")


def _models_left(ws) -> int:
    """Bytes left under the workspace's models folder."""
    return sum(p.stat().st_size for p in ws.models_dir().rglob("*") if p.is_file())


def _import_refused_and_removed(tmp: Path, name: str, words: str = "") -> str:
    from recsys_core.workspace.artifacts import import_model_zip

    ws = _workspace(tmp)
    result = _expect_refusal(lambda: import_model_zip((tmp / name).read_bytes(), ws.models_dir(), filename=name),
                             words=words)
    if _models_left(ws) > 1 << 20:
        raise Hole(f"the refused import left {_models_left(ws) / 2**20:,.0f} MB on disk")
    return result


@built_by(_build_model_zip_of_20m_ids)
def model_zip_of_20m_item_ids(tmp: Path) -> str:
    return _import_refused_and_removed(tmp, "ids.zip")


def _build_model_zip_of_mib_members(tmp: Path) -> None:
    with zipfile.ZipFile(tmp / "mib.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/config.json", b"{}")
        for k in range(2000):
            zf.writestr(f"m/w{k}.bin", bytes(1 << 20))


@built_by(_build_model_zip_of_mib_members)
def model_zip_of_2000_mib_members(tmp: Path) -> str:
    return _import_refused_and_removed(tmp, "mib.zip")


@case
def model_zip_of_the_apps_own_run(tmp: Path) -> str:
    """A run folder the app saved, zipped as a user would: it must import."""
    from recsys_core.training.experiment import run_experiment
    from recsys_core.workspace.artifacts import import_model_zip

    ws = _workspace(tmp)
    run = run_experiment(tiny_dataset(), "popularity", {}, workspace=ws)
    folder = ws.resolve_inside(run.artifact_dir, "run folder")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in folder.rglob("*"):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
    try:
        import_model_zip(buf.getvalue(), ws.models_dir(), filename="my-run.zip")
    except Exception as err:
        raise Misleading(f"the app's own run folder was refused: {err}"[:300]) from err
    return "ok"


# ---- errors that name the right cause (issue 24, part 6) ----------------------------------------------


@case
def csv_100k_columns(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    header = ",".join(["user", "item"] + [f"c{k}" for k in range(99_998)])
    rows = "\n".join(",".join(["1"] * 100_000) for _ in range(3))
    return _expect_refusal_or_ok(lambda: read_table(f"{header}\n{rows}\n".encode(), "wide.csv"), words="column")


@case
def csv_quoted_newlines_over_256kb(tmp: Path) -> str:
    """Legal CSV: a quoted note spanning lines, in a file big enough to be parsed in the child."""
    from recsys_core.data.read import read_table

    rows = "".join(f'u{k % 500},i{k % 300},"line one\nline two, with a comma"\n' for k in range(12_000))
    data = ("user,item,note\n" + rows).encode()
    assert len(data) > 256 << 10
    try:
        table = read_table(data, "notes.csv")
    except Exception as err:
        raise Misleading(f"legal quoted newlines refused: {err}"[:300]) from err
    if table.n_rows != 12_000:
        raise DataLoss(f"read {table.n_rows} rows of 12,000")
    return "ok"


@case
def utf16le_without_bom(tmp: Path) -> str:
    from recsys_core.data.read import read_table

    data = "user,item,rating\n" + "".join(f"u{k},i{k % 7},4\n" for k in range(200))
    return _expect_refusal_or_ok(lambda: read_table(data.encode("utf-16-le"), "r.csv"), words="UTF-16")


@case
def nested_parquet(tmp: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_core.data.load import load_dataset

    table = pa.table({"user": pa.array([{"id": "u1"}, {"id": "u2"}]), "item": pa.array([["i1"], ["i2"]])})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return _expect_refusal(lambda: load_dataset(buf.getvalue(), "nested.parquet"), words="nested|struct|list")


@case
def negative_ratings(tmp: Path) -> str:
    from recsys_core.data.load import load_dataset

    data = "user,item,rating\n" + "".join(f"u{k % 20},i{k % 13},{-3 if k % 5 == 0 else 4}\n" for k in range(300))
    try:
        _, report = load_dataset(data.encode(), "neg.csv")
    except Exception as err:
        if "negative" not in str(err).lower():
            raise Misleading(f"refused for another reason: {err}"[:300]) from err
        return "clear_error"
    if "negative" not in str(report).lower():
        raise Misleading("negative ratings were accepted without a word in the report")
    return "ok"


# ---- tracebacks and server paths (issue 24, part 5) --------------------------------------------------


@case
def model_folder_name_of_300_characters(tmp: Path) -> str:
    from recsys_core.models.base import load_model

    ws = _workspace(tmp)
    return _expect_refusal(lambda: load_model(ws.resolve_inside("m" * 300, "model folder")))


@case
def jail_errors_name_no_server_path(tmp: Path) -> str:
    from recsys_core.errors import RecsysError

    ws = _workspace(tmp)
    for path in ("/etc/passwd", "../other", "models/../../x"):
        try:
            ws.resolve_inside(path, "model folder")
        except RecsysError as err:
            if str(ws.root.resolve()) in f"{err} {err.hint}" or str(tmp) in f"{err} {err.hint}":
                raise Hole(f"the error shows the server's path: {err}") from err
            continue
        raise Hole(f"{path} was accepted")
    return "clear_error"


@case
def cli_errors_without_traceback(tmp: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_WORKSPACE": str(tmp / "ws")}
    for args in (["train", "--dataset", "nope", "--model", "sasrec"], ["recommend", "--model-dir", "../../etc", "--user", "1"],
                 ["train", "--dataset", "demo", "--model", "sasrec", "--set", "lr=-1"]):
        proc = subprocess.run([sys.executable, "-m", "recsys_core", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300, check=False)
        if "Traceback" in proc.stdout + proc.stderr:
            raise Misleading(f"`recsys {' '.join(args)}` printed a traceback")
        if proc.returncode == 0:
            raise Hole(f"`recsys {' '.join(args)}` succeeded")
        if str(tmp) in proc.stdout + proc.stderr:
            raise Hole(f"`recsys {' '.join(args)}` printed the server's path")
    return "clear_error"


@case
def error_details_hidden_from_visitors(tmp: Path) -> str:
    import tomllib

    client = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text()).get("client", {})
    if client.get("showErrorDetails") not in ("none", False):
        raise Hole(f"client.showErrorDetails is {client.get('showErrorDetails', 'unset (full)')!r}")
    return "clear_error"


# ---- where the server connects (issue 24, part 3) -----------------------------------------------------


class Hang(Exception):
    """The case held its caller past the time it promised."""


def _llm_failure(server_url: str, *, stream: bool = True, timeout_s: float | None = None) -> tuple[str, float]:
    """The LLMError message a request to `server_url` ends in, and the seconds it took."""
    import time

    from recsys_core.blurbs.remote import OpenAIBackend
    from recsys_core.errors import LLMError

    backend = OpenAIBackend(server_url, "m", **({"timeout_s": timeout_s} if timeout_s else {}))
    start = time.perf_counter()
    try:
        list(backend.generate([{"role": "user", "content": "hi"}], stream=stream))
    except LLMError as err:
        return f"{err.message} {err.hint or ''}", time.perf_counter() - start
    raise Hole("the hostile reply was accepted")


@case
def llm_url_typed_by_a_visitor(tmp: Path) -> str:
    import time

    from tests.llm_loopback import ConnectionRecorder

    with ConnectionRecorder() as visitor:
        said, _ = _llm_failure(visitor.url)
        time.sleep(0.3)
    if visitor.connections:
        raise Hole(f"the server connected {visitor.connections} time(s) to a URL a visitor typed")
    if "operator" not in said:
        raise Misleading(said)
    return "clear_error"


def _hostile_llm(limit_s: float, *, stream: bool = True, timeout_s: float | None = None, **server) -> str:
    """A hostile operator-listed server (`server`: LoopbackLLM's mode and its knobs): a clear error within
    `limit_s`, or a hang."""
    from tests.llm_loopback import LoopbackLLM

    with LoopbackLLM(**server) as hostile:
        _, took = _llm_failure(hostile.url, stream=stream, timeout_s=timeout_s)
    if took > limit_s:
        raise Hang(f"{took:.1f} s to end the request (promised {limit_s} s)")
    return "clear_error"


@case
def llm_one_3gb_line(tmp: Path) -> str:
    return _hostile_llm(10, mode="flood", flood_bytes=3 << 30)


@case
def llm_one_byte_every_2_s(tmp: Path) -> str:
    return _hostile_llm(6.5, timeout_s=5, mode="trickle", trickle_s=2.0)


@case
def llm_reply_nested_200k_deep(tmp: Path) -> str:
    return _hostile_llm(10, stream=False, mode="nested", depth=200_000)


@case
def hub_name_in_the_train_forms_model_name(tmp: Path) -> str:
    """The text tower's `model_name` set to a hub id, hub access not allowed by the operator: refused before any
    request (the hub's address points at a recorder here, so a request would be seen)."""
    import time

    from tests.llm_loopback import ConnectionRecorder

    with ConnectionRecorder() as hub:
        os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="", TRANSFORMERS_OFFLINE="",
                          HF_HOME=str(tmp / "hf"))
        from recsys_core.training.experiment import make_model

        for family, setting in (("text_tower", "model_name"), ("hybrid", "text_model_name")):
            _expect_refusal(lambda f=family, s=setting: make_model(f, {s: "someorg/some-model"}).fit(tiny_dataset()),
                            words="RECSYS_ALLOW_HUB_MODELS")
        time.sleep(0.3)
    if hub.connections:
        raise Hole(f"{hub.connections} request(s) reached the hub without RECSYS_ALLOW_HUB_MODELS")
    return "clear_error"


@case
def blurbs_example_folder_llm_my_model(tmp: Path) -> str:
    from recsys_core.blurbs import hub

    ws = _workspace(tmp)
    return _expect_refusal(lambda: hub.llm_source("llm/my-model", ws.root / "llm"), words="no such folder")


# ---- the gate (issue 24, part 2): the real server as a raw client -----------------------------------------


def _gated_server(tmp: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from e2e_util import streamlit_server

    env = {"RECSYS_PASSWORD": "correct horse battery staple", "RECSYS_SESSION_SECRET": "attack-secret-0123456789"}
    return streamlit_server(tmp / "ws", tmp / "streamlit.log", env=env)


def _server_rss_mb() -> float:
    import psutil

    return max(p.memory_info().rss for p in psutil.Process().children(recursive=True)) / 2**20


@case
def gate_doors_before_sign_in(tmp: Path) -> str:
    """A page link, static files, host config, an upload announcing 400 MB, the websocket: all shut."""
    import socket
    from urllib.parse import urlsplit

    with _gated_server(tmp) as url:
        from test_e2e_gate import request, websocket_status

        if request(url, "GET", "/recommend?dataset=demo")[0] != 303:
            raise Hole("a page link opened without the password")
        for path in ("/_stcore/host-config", "/_stcore/upload_file/s/f"):
            if request(url, "GET", path)[0] != 401:
                raise Hole(f"{path} answered without the password")
        if websocket_status(url) == 101:
            raise Hole("the websocket opened without the password")
        before = _server_rss_mb()
        where = urlsplit(url)
        for _ in range(5):
            with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
                sock.sendall(b"PUT /_stcore/upload_file/s/f HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n"
                             b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + b"x" * (1 << 20))
                if not sock.recv(64).startswith(b"HTTP/1.1 401"):
                    raise Hole("an upload without the password was not refused")
        grew = _server_rss_mb() - before
    if grew > 100:
        raise Hole(f"five refused uploads still grew the server by {grew:.0f} MB")
    SAID.append(f"five 400 MB uploads refused with 401; the server's RSS {before:.0f} MB grew {grew:.0f} MB")
    return "clear_error"


@case
def gate_parallel_guessing(tmp: Path) -> str:
    """20 clients from 20 loopback addresses guess for 8 s: the global backoff must hold them to a trickle."""
    import threading
    import time

    with _gated_server(tmp) as url:
        from test_e2e_gate import sign_in

        checked, stop = [], time.monotonic() + 8

        def guess(k: int) -> None:
            while time.monotonic() < stop:
                status = sign_in(url, f"guess-{k}-{time.monotonic()}", source=f"127.0.{k}.1")[0]
                if status != 429:
                    checked.append(status)

        threads = [threading.Thread(target=guess, args=(k,)) for k in range(1, 21)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if len(checked) / 8 > 2:
        raise Hole(f"{len(checked) / 8:.1f} guesses/s were checked")
    SAID.append(f"{len(checked)} guesses checked in 8 s by 20 clients ({len(checked) / 8:.2f}/s)")
    return "clear_error"


@case
def gate_sign_in_keeps_the_link_and_survives_reload(tmp: Path) -> str:
    with _gated_server(tmp) as url:
        from test_e2e_gate import request, sign_in

        status, headers, _ = sign_in(url, "correct horse battery staple", "/recommend?dataset=demo")
        if status != 303 or headers["location"] != "/recommend?dataset=demo":
            raise Misleading(f"sign-in did not land on the linked page ({status} {headers.get('location')})")
        token = headers["set-cookie"].split(";")[0].split("=", 1)[1]
        for _ in range(2):  # the page, then a reload
            if request(url, "GET", "/recommend?dataset=demo", cookie=token)[0] != 200:
                raise Misleading("a signed-in reload asked for the password again")
        if sign_in(url, "correct horse battery staple", "//evil.example/")[1]["location"] != "/":
            raise Hole("sign-in redirects to another site")
    return "clear_error"


# ---- processes (issue 24, part 4) ------------------------------------------------------------------------


def _job_store(tmp: Path):
    from recsys_core.workspace.jobs import JobStore

    ws = _workspace(tmp)
    ws.save_dataset(tiny_dataset(), "cycle")
    return JobStore(ws)


@case
def ten_start_training_clicks(tmp: Path) -> str:
    """Ten Start clicks at once: at most the cap's job processes, the rest queued with their place in line."""
    import time

    import psutil

    from recsys_core.training.jobs import TrainingJob, max_jobs

    store = _job_store(tmp)
    settings = {"hidden": 16, "layers": 1, "max_len": 8, "epochs": 10_000, "patience": 10_000}
    jobs = [TrainingJob.start(store, "cycle", "sasrec", settings) for _ in range(10)]
    most, deadline = 0, time.monotonic() + 20
    while time.monotonic() < deadline:
        most = max(most, len(psutil.Process().children(recursive=False)))
        time.sleep(0.2)
    queued = [j.record().queue_position for j in jobs if j.record().queued]
    for job in jobs:
        job.cancel()
    for job in jobs:
        job.join(60)
    if most > max_jobs():
        raise Hole(f"{most} job processes at once; the cap is {max_jobs()}")
    if len(queued) < 10 - max_jobs() or sorted(queued) != list(range(1, len(queued) + 1)):
        raise Misleading(f"queued places {queued}")
    return "clear_error"


@case
def killed_server_leaves_no_zombie(tmp: Path) -> str:
    """A server killed while its job trains: this process adopts the orphan as init would (a subreaper); the
    worker must end on its own and be reaped, its run kept."""
    import ctypes
    import signal
    import time

    import psutil

    from tests.test_jobs_queue import PR_SET_CHILD_SUBREAPER, SERVER

    store = _job_store(tmp)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(store.workspace.root)], stdout=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    job_id = int(server.stdout.readline())
    deadline = time.monotonic() + 120
    while not store.get(job_id).pid and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = store.get(job_id).pid
    time.sleep(3)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, _ = os.waitpid(worker, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)
        raise Hang("the worker ran on 60 s after its server was killed")
    if psutil.pid_exists(worker) and psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
        raise Hole("the worker is a zombie")
    if store.get(job_id).status == "running":
        raise DataLoss("the job is still recorded as running")
    return "clear_error"


# ---- HTML in chart labels ----------------------------------------------------------------------------


@case
def html_titles_in_chart_labels(tmp: Path) -> str:
    import numpy as np

    from views.ui import charts

    ds = tiny_dataset(HTML_TITLES)
    figure = charts.long_tail_figure(charts.long_tail_frame(ds.item_popularity, labels=ds.labels), "item")
    labels = [charts.chart_label(t, 42) for t in ds.labels] + [charts.chart_label(g) for g in ds.items["genres"]]
    text = figure.to_json() + json.dumps(labels) + json.dumps(np.asarray(ds.labels).tolist())
    raw = figure.to_json() + json.dumps(labels)
    for tag in ("<a ", "<span", "<img", "<b>"):
        if tag in raw:
            raise Hole(f"{tag!r} reached a chart label")
    assert "CLICKME" in text
    return "clear_error"


# ---- runner ------------------------------------------------------------------------------------------


def run_case(name: str, tmp: Path) -> dict:
    """One case in this process: its outcome, a detail line, its wall time and this process's peak memory."""
    import time

    import plotly.graph_objects  # noqa: F401  imports are not the case's memory
    import pyarrow.json  # noqa: F401

    import recsys_core.models  # noqa: F401
    from recsys_core.errors import RecsysError

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        outcome = CASES[name](tmp)
        detail = " | ".join(SAID)[:300]
    except Hole as err:
        outcome, detail = "hole", str(err)
    except Misleading as err:
        outcome, detail = "misleading", str(err)
    except DataLoss as err:
        outcome, detail = "data_loss", str(err)
    except Hang as err:
        outcome, detail = "hang_or_memory", str(err)
    except RecsysError as err:
        outcome, detail = "clear_error", err.message
    except Exception as err:  # noqa: BLE001 - counted, not raised
        outcome, detail = "traceback", f"{type(err).__name__}: {str(err)[:200]}"
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak - base > BLOWUP_MB or peak > SERVER_RSS_MB:
        outcome, detail = "hang_or_memory", f"peak RSS {peak:,.0f} MB (+{peak - base:,.0f} MB); {detail}"
    elif wall > HANG_S:
        outcome, detail = "hang_or_memory", f"took {wall:.0f} s; {detail}"
    return {"case": name, "outcome": outcome, "detail": detail, "added_mb": round(peak - base),
            "peak_rss_mb": round(peak), "wall_s": round(wall, 2)}


def _run(args: list[str], tmp: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("RECSYS_LLM_URL", "RECSYS_LLM_API_KEY", "RECSYS_LLM_MODEL", "RECSYS_ALLOWED_PATHS",
                "RECSYS_LLM_ENDPOINTS", "RECSYS_PASSWORD", "RECSYS_ALLOW_HUB_MODELS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, __file__, *args, "--tmp", tmp], capture_output=True, check=False,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def _child(name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if name in BUILDERS:
            built = _run(["--build", name], tmp, 900)
            if built.returncode != 0:
                raise SystemExit(f"building the input of {name} failed: {built.stderr[-500:]}")
        try:
            proc = _run(["--case", name], tmp, HANG_S * 3)
        except subprocess.TimeoutExpired:
            return {"case": name, "outcome": "hang_or_memory", "detail": f"killed after {HANG_S * 3:.0f} s"}
    if proc.returncode != 0:
        return {"case": name, "outcome": "crash", "detail": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--build", choices=sorted(BUILDERS))
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--tmp", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--update", action="store_true",
                        help="rerun the --only cases and replace them in the existing result file (counts redone)")
    args = parser.parse_args()
    if args.build:
        BUILDERS[args.build](args.tmp)
        return
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_case(args.case, args.tmp or Path(tmp))))
        return
    out = args.out or ROOT / "bench" / "results" / f"attacks-{datetime.now():%Y%m%d}.json"
    kept = {c["case"]: c for c in json.loads(out.read_text())["cases"] if c["case"] in CASES} if args.update else {}
    for name in [n for n in CASES if args.only in n]:
        kept[name] = _child(name) | ({"rerun": datetime.now().isoformat(timespec="seconds")} if args.update else {})
        print(f"{name}: {kept[name]['outcome']} {kept[name].get('detail', '')[:120]}", file=sys.stderr)
    cases = list(kept.values())
    summary = {"tried": len(cases), **{o: sum(c["outcome"] == o for c in cases) for o in OUTCOMES},
               "date": datetime.now().strftime("%Y-%m-%d"), "load_avg": list(os.getloadavg()),
               "server_rss_limit_mb": SERVER_RSS_MB, "cases": cases}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}))


if __name__ == "__main__":
    main()
