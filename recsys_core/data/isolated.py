"""Parsing untrusted bytes in a child process, so a parser crash or blow-up never takes the server down.

pyarrow's JSON reader segfaults on deeply nested input (20,000 levels of `{"a":` on one line), and a
small file can expand to gigabytes of objects; a CSV can hold one 400 MB field or a hundred million short
rows. A Streamlit server is one process for every session, so parsers of uploaded bytes (Parquet, JSON,
and delimited text over `read.INLINE_TEXT_BYTES`) run in a fresh child interpreter with an address-space limit (`RLIMIT_AS`), a CPU-time
limit and a wall-clock timeout. The child sends back the parsed frame or the project's own error;
a crash, a limit or a timeout becomes a `DataError` / `ResourceError` naming the file.

Limits come from ONE operator setting, `RECSYS_INGEST_MEMORY_MB` (default 4096; the older name
`RECSYS_PARSE_MEMORY_MB` is still read when the new one is unset): the child's address space, and from it
the rows one file may yield (`memory_mb * ROWS_PER_MB`, 20.5 M at the default: a whole ingest costs about
100-200 bytes a row), the bytes a table may unpack to (half the memory) and the members a zip may list
(`memory_mb * MEMBERS_PER_MB`). `RECSYS_MAX_ROWS` and `RECSYS_MAX_READ_MB` still override their derived
value when set, and `RECSYS_PARSE_TIMEOUT_S` (default 180) bounds the wall clock (the CPU limit is twice
that). Read at call time, so an operator can tune a running deployment. Local paths named by the operator
or the CLI are trusted and not sent here.

Inside the child `in_child()` is true: the engine then parses uploads in-process (it already is the
limited process), so a whole ingest (`workspace.ingest`) runs there in one child, not a child per step.
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

MEMORY_ENV, TIMEOUT_ENV, ROWS_ENV = "RECSYS_INGEST_MEMORY_MB", "RECSYS_PARSE_TIMEOUT_S", "RECSYS_MAX_ROWS"
LEGACY_MEMORY_ENV = "RECSYS_PARSE_MEMORY_MB"  # the setting's former name, still honoured
READ_ENV = "RECSYS_MAX_READ_MB"
DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S = 4096, 180.0
ROWS_PER_MB = 5_000  # rows a file may yield per MB of the child's memory
MEMBERS_PER_MB = 2  # zip members an upload may list per MB (8,192 at the default)
_IN_CHILD = False  # set in the limited child itself
_SETTING = f"{MEMORY_ENV} (formerly {LEGACY_MEMORY_ENV})"  # how hints name the setting
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding recsys_core, for the child's imports
# At most this many parse children at once: each may use up to the memory limit.
_SLOTS = threading.BoundedSemaphore(2)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def ingest_memory_mb() -> float:
    """The ingest child's memory in MB: the one operator setting every other ingest limit derives from."""
    return _env_number(MEMORY_ENV, _env_number(LEGACY_MEMORY_ENV, DEFAULT_MEMORY_MB))


def max_rows() -> int:
    """Most rows one file may yield (`RECSYS_MAX_ROWS`, else derived from the memory)."""
    return int(_env_number(ROWS_ENV, ingest_memory_mb() * ROWS_PER_MB))


def max_read_bytes() -> int:
    """Most uncompressed bytes one table (or all of a zip's members) may unpack to (`RECSYS_MAX_READ_MB`, else
    half the memory)."""
    return int(_env_number(READ_ENV, ingest_memory_mb() / 2) * 2**20)


def max_members() -> int:
    """Most members an uploaded zip may list (derived from the memory)."""
    return int(ingest_memory_mb() * MEMBERS_PER_MB)


def in_child() -> bool:
    """True inside the limited child: uploads are parsed right here, it is already the isolated process."""
    return _IN_CHILD


def too_many_rows(file: str, n: int, limit: int, *, at_least: bool = False) -> errors.ResourceError:
    """`at_least`: the reader stopped at `n` rows, the file may hold more."""
    count = f"at least {n:,}" if at_least else f"{n:,}"
    return errors.ResourceError(f"the file has {count} rows, over the limit of {limit:,}", file=file,
                                hint=f"load a sample of the rows, or ask the operator to raise {ROWS_ENV}")


def run_isolated(fn: Callable[..., Any], blob: Blob, *numbers: int, file: str, memory_mb: float | None = None,
                 timeout_s: float | None = None, params: dict | None = None, extra: bytes = b"") -> Any:
    """`fn(blob, *numbers, **params)` in a limited child process: its frame (or (frame, tag)), or the RecsysError
    it raised. `params` and a tag must be JSON values; the frame may be pandas, an Arrow table, or None when
    only the tag matters (a whole ingest sends back its record and report, never its rows). `extra` bytes
    follow the blob's in the child's `blob.data` (a second file: pass its offset among `numbers`); the bytes
    are written to the child piece by piece, never joined into one more copy of an upload in this process.

    `fn` must be a module-level function of `recsys_core` (the child imports it by name). Nothing crosses
    the pipe as pickle: the request is a JSON header plus the raw bytes, the reply a JSON header plus an
    Arrow IPC stream, so a child that a malicious file subverted still cannot run code in the server.
    A crash, a memory limit or a timeout in the child raises here.
    """
    if not fn.__module__.startswith("recsys_core."):
        raise ValueError(f"run_isolated runs recsys_core functions only, not {fn.__module__}.{fn.__qualname__}")
    memory_mb = memory_mb or ingest_memory_mb()
    timeout_s = timeout_s or _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    header = {"module": fn.__module__, "name": fn.__qualname__, "numbers": [int(n) for n in numbers],
              "blob_name": blob.name, "member": blob.member, "memory_bytes": int(memory_mb * 2**20),
              "timeout_s": timeout_s, "params": params or {}}
    request = [json.dumps(header).encode() + b"\n", blob.data, extra]
    with _SLOTS:
        out = _exchange(request, timeout_s)
    if out is None:
        raise errors.ResourceError(f"reading the file took longer than {timeout_s:g} s and was stopped", file=file,
                                   hint=f"upload a smaller file or a sample, or ask the operator to raise {TIMEOUT_ENV}")
    code, reply = out
    if code != 0 or not reply:
        raise _death(file, code, memory_mb)
    return _unpack(reply, file, memory_mb)


def _exchange(request: list[bytes], timeout_s: float) -> tuple[int, bytes] | None:
    """(exit code, stdout) of one child run, fed the `request` pieces by a writer thread; None on timeout (the
    child is killed).

    A fresh interpreter (`python -m recsys_core.data.isolated`), not `multiprocessing`: that would
    re-run the parent's `__main__` in the child, and `python -m recsys_core` has no main guard.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    stdin, proc.stdin = proc.stdin, None  # fed here, so `communicate` only reads

    def feed() -> None:
        try:
            for piece in request:
                stdin.write(piece)
        except OSError:  # the child died or stopped reading: its exit code says why
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    threading.Thread(target=feed, name="isolated-feed", daemon=True).start()
    try:
        stdout, _ = proc.communicate(timeout=timeout_s)
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
            file=file, hint=f"upload a smaller or simpler file (a parse may use {memory_mb:,.0f} MB: {_SETTING})")
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
    if kind == "ok" and not message.get("frame", True):
        return None, payload
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
                                                   f"raise {_SETTING}")
    if kind == "error":
        cls_name, fields = payload
        cls = getattr(errors, cls_name, errors.DataError)
        message = fields.pop("message")
        raise cls(message, **fields)
    raise errors.DataError(f"the file could not be parsed ({payload})", file=file,
                           hint="check the file's format, or save it as CSV")


def _call(request: bytes) -> tuple:
    """In the child: set the limits, run the function, return (kind, payload[, frame])."""
    global _IN_CHILD
    _IN_CHILD = True
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
    out.write(json.dumps({"kind": kind, "payload": payload, "frame": table is not None}).encode() + b"\n")
    if table is not None:  # streamed to the pipe: no second copy of the table in the child
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
    out.flush()


def _arrow(frame: Any) -> pa.Table:
    return frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)


if __name__ == "__main__":
    _main()
