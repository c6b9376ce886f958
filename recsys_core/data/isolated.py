"""Parsing untrusted bytes in a child process, so a parser crash or blow-up never takes the server down.

pyarrow's JSON reader segfaults on deeply nested input (20,000 levels of `{"a":` on one line), and a
small file can expand to gigabytes of objects; a CSV can hold one 400 MB field or a hundred million short
rows. A Streamlit server is one process for every session, so parsers of uploaded bytes (Parquet, JSON,
and delimited text over `read.INLINE_TEXT_BYTES`) run in a fresh child interpreter with an address-space limit (`RLIMIT_AS`), a CPU-time
limit and a wall-clock timeout. The child sends back the parsed frame or the project's own error;
a crash, a limit or a timeout becomes a `DataError` / `ResourceError` naming the file.

Limits (environment variables, read at call time so an operator can tune a running deployment):
`RECSYS_PARSE_MEMORY_MB` (default 4096), `RECSYS_PARSE_TIMEOUT_S` (default 180), `RECSYS_MAX_ROWS`
(default 50,000,000 rows read from one file), `RECSYS_MAX_READ_MB` (default 2048: bytes a Parquet file may
unpack to, or a text table may take once read into columns; text is read in blocks and stopped at the
first block past either cap). Local paths named by the operator or the CLI are trusted and not sent here.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from recsys_core import errors
from recsys_core.data.source import Blob

MEMORY_ENV, TIMEOUT_ENV, ROWS_ENV = "RECSYS_PARSE_MEMORY_MB", "RECSYS_PARSE_TIMEOUT_S", "RECSYS_MAX_ROWS"
READ_ENV = "RECSYS_MAX_READ_MB"
DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, DEFAULT_MAX_ROWS, DEFAULT_READ_MB = 4096, 180.0, 50_000_000, 2048
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding recsys_core, for the child's imports
# At most this many parse children at once: each may use up to the memory limit.
_SLOTS = threading.BoundedSemaphore(2)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def max_rows() -> int:
    """Most rows one file may yield (`RECSYS_MAX_ROWS`)."""
    return int(_env_number(ROWS_ENV, DEFAULT_MAX_ROWS))


def max_read_bytes() -> int:
    """Most uncompressed bytes one compressed table may unpack to (`RECSYS_MAX_READ_MB`)."""
    return int(_env_number(READ_ENV, DEFAULT_READ_MB) * 2**20)


def too_many_rows(file: str, n: int, limit: int, *, at_least: bool = False) -> errors.ResourceError:
    """`at_least`: the reader stopped at `n` rows, the file may hold more."""
    count = f"at least {n:,}" if at_least else f"{n:,}"
    return errors.ResourceError(f"the file has {count} rows, over the limit of {limit:,}", file=file,
                                hint=f"load a sample of the rows, or ask the operator to raise {ROWS_ENV}")


def run_isolated(fn: Callable[..., Any], blob: Blob, *numbers: int, file: str, memory_mb: float | None = None,
                 timeout_s: float | None = None, params: dict | None = None) -> Any:
    """`fn(blob, *numbers, **params)` in a limited child process: its frame (or (frame, tag)), or the RecsysError
    it raised. `params` and a tag must be JSON values; the frame may be pandas or an Arrow table.

    `fn` must be a module-level function of `recsys_core` (the child imports it by name). Nothing crosses
    the pipe as pickle: the request is a JSON header plus the raw bytes, the reply a JSON header plus an
    Arrow IPC stream, so a child that a malicious file subverted still cannot run code in the server.
    A crash, a memory limit or a timeout in the child raises here.
    """
    if not fn.__module__.startswith("recsys_core."):
        raise ValueError(f"run_isolated runs recsys_core functions only, not {fn.__module__}.{fn.__qualname__}")
    memory_mb = memory_mb or _env_number(MEMORY_ENV, DEFAULT_MEMORY_MB)
    timeout_s = timeout_s or _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    header = {"module": fn.__module__, "name": fn.__qualname__, "numbers": [int(n) for n in numbers],
              "blob_name": blob.name, "member": blob.member, "memory_bytes": int(memory_mb * 2**20),
              "timeout_s": timeout_s, "params": params or {}}
    request = json.dumps(header).encode() + b"\n" + bytes(blob.data)
    with _SLOTS:
        out = _exchange(request, timeout_s)
    if out is None:
        raise errors.ResourceError(f"reading the file took longer than {timeout_s:g} s and was stopped", file=file,
                                   hint=f"upload a smaller file or a sample, or ask the operator to raise {TIMEOUT_ENV}")
    code, reply = out
    if code != 0 or not reply:
        raise _death(file, code, memory_mb)
    return _unpack(reply, file, memory_mb)


def _exchange(request: bytes, timeout_s: float) -> tuple[int, bytes] | None:
    """(exit code, stdout) of one child run; None on timeout (the child is killed).

    A fresh interpreter (`python -m recsys_core.data.isolated`), not `multiprocessing`: that would
    re-run the parent's `__main__` in the child, and `python -m recsys_core` has no main guard.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        stdout, _ = proc.communicate(request, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return proc.returncode, stdout


def _death(file: str, code: int, memory_mb: float) -> errors.RecsysError:
    """The error for a child that died without replying (a segfault, an abort, a kill)."""
    sig = -code if code < 0 else None
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"exit code {code}"
    if sig in (signal.SIGKILL, signal.SIGABRT, signal.SIGXCPU):
        return errors.ResourceError(
            f"the parser ran out of memory or time ({name}) while reading the file; the file was not loaded",
            file=file, hint=f"upload a smaller or simpler file (a parse may use {memory_mb:,.0f} MB: {MEMORY_ENV})")
    return errors.DataError(
        f"the parser crashed on this file ({name}); the server is fine, the file was not loaded", file=file,
        hint="the file is malformed or extremely deeply nested: flatten it to one object per line with plain "
             "values, or save it as CSV")


def _unpack(reply: bytes, file: str, memory_mb: float) -> Any:
    """The child's reply: a JSON header line, then (for a result) the frame as an Arrow IPC stream."""
    head, _, body = reply.partition(b"\n")
    try:
        message = json.loads(head)
        kind, payload = message["kind"], message.get("payload")
    except (ValueError, KeyError, TypeError):
        kind, payload = "failed", "an unreadable reply"
    if kind == "ok":
        try:
            frame = pa.ipc.open_stream(body).read_all().to_pandas()
        except (pa.ArrowException, ValueError) as err:  # a child killed while writing its reply
            raise errors.ResourceError("the parser stopped while sending the table back; the file was not loaded",
                                       file=file, hint="upload a smaller file or a sample") from err
        return frame if payload is None else (frame, payload)
    if kind == "memory":
        raise errors.ResourceError(f"reading the file needs more than the {memory_mb:,.0f} MB a parse may use",
                                   file=file, hint=f"upload a smaller file or a sample, or ask the operator to "
                                                   f"raise {MEMORY_ENV}")
    if kind == "error":
        cls_name, fields = payload
        cls = getattr(errors, cls_name, errors.DataError)
        message = fields.pop("message")
        raise cls(message, **fields)
    raise errors.DataError(f"the file could not be parsed ({payload})", file=file,
                           hint="check the file's format, or save it as CSV")


def _call(request: bytes) -> tuple:
    """In the child: set the limits, run the function, return (kind, payload[, frame])."""
    head, _, data = request.partition(b"\n")
    spec = json.loads(head)
    memory_bytes, timeout_s = spec["memory_bytes"], spec["timeout_s"]
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(timeout_s * 2) + 1  # a backstop should the parent vanish; the parent's timeout is the rule
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    try:
        fn = getattr(importlib.import_module(spec["module"]), spec["name"])
        result = fn(Blob(data, spec["blob_name"], spec["member"]), *spec["numbers"], **spec.get("params", {}))
        frame, tag = result if isinstance(result, tuple) else (result, None)
        return "ok", tag, frame
    except errors.RecsysError as err:
        fields = {"message": err.message, "file": err.file, "line": err.line, "column": err.column,
                  "hint": err.hint, "examples": err.examples}
        return "error", [type(err).__name__, fields], None
    except (MemoryError, pa.ArrowMemoryError):
        return "memory", None, None
    except Exception as err:  # noqa: BLE001 - whatever the parser raises is reported, never a traceback
        if any(text in str(err) for text in _OUT_OF_ROOM):
            return "memory", None, None
        return "failed", f"{type(err).__name__}: {str(err)[:200]}", None


# What Arrow says when the address-space limit stops it (a thread stack or a buffer it could not map).
_OUT_OF_ROOM = ("Failed to launch worker thread", "Resource temporarily unavailable", "Cannot allocate memory",
                "malloc of size", "realloc of size")


def _main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the reply
    request = sys.stdin.buffer.read()
    try:
        kind, payload, frame = _call(request)
        del request
        table = None if frame is None else _arrow(frame)
    except MemoryError:
        kind, payload, table = "memory", None, None
    out.write(json.dumps({"kind": kind, "payload": payload}).encode() + b"\n")
    if table is not None:  # streamed to the pipe: no second copy of the table in the child
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
    out.flush()


def _arrow(frame: Any) -> pa.Table:
    return frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)


if __name__ == "__main__":
    _main()
