"""Reading a table file into a raw frame: CSV/TSV/'::'/'|' text, Parquet, JSON Lines, or a zip of one.

Delimited text is parsed by pyarrow with every column as a string, so ids keep their leading
zeros ("0000008" stays an IMDb id); typing happens later, once we know which column is which.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from recsys_core.data.isolated import READ_ENV, in_child, max_read_bytes, max_rows, run_isolated, too_many_rows
from recsys_core.data.sniff import (
    MAX_COLUMNS,
    TextLayout,
    looks_binary,
    sniff_layout,
    split_line,
    too_many_columns,
    utf16_without_bom,
)
from recsys_core.data.source import (
    DEFAULT_MAX_BYTES,
    Blob,
    Source,
    is_zip,
    load_blob,
    pick_member,
    read_member,
    zip_members,
)
from recsys_core.errors import DataError, RecsysError, ResourceError

_JSON_EXT = (".jsonl", ".ndjson", ".json")
_PARQUET_EXT = (".parquet", ".pq")
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"7z\xbc\xaf": "7-Zip", b"Rar!": "RAR",
          b"%PDF": "PDF", b"\x89PNG": "PNG image", b"\xff\xd8\xff": "JPEG image", b"SQLite format": "SQLite database"}


@dataclass
class RawTable:
    """A parsed but not yet interpreted table, and how it was read."""

    frame: pd.DataFrame
    file: str
    format: str  # 'csv', 'tsv', 'dat' ('::'), 'psv' ('|'), 'ssv' (';'), 'txt' (space), 'parquet', 'jsonl', 'json'
    delimiter: str | None
    has_header: bool
    encoding: str | None
    n_rows: int
    member: str | None = None  # zip member the table came from
    # File line of each frame row, only when blank lines make it differ from row + first_line.
    line_numbers: np.ndarray | None = field(default=None, repr=False)
    first_line: int = 1
    notes: list[str] = field(default_factory=list)  # what reading left out, said in the report

    @property
    def row_word(self) -> str:
        """What a position in this file is called in messages ('line' for text, 'row' for Parquet)."""
        return "row" if self.format == "parquet" else "line"

    def line_of(self, rows: np.ndarray) -> np.ndarray:
        """1-based file line (or Parquet row) of frame row positions."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.line_numbers is not None:
            return self.line_numbers[rows]
        return rows + self.first_line

    def describe(self) -> str:
        parts = [self.format.upper()]
        if self.delimiter is not None:
            parts.append(f"delimiter {self.delimiter!r}")
        if self.format not in ("parquet", "jsonl", "json"):
            parts.append("with header" if self.has_header else "no header")
        if self.encoding:
            parts.append(self.encoding)
        text = f"{self.file}: " + ", ".join(parts) + f", {self.n_rows} rows"
        return "; ".join([text, *self.notes])


def read_table(source: Source, filename: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
               delimiter: str | None = None, has_header: bool | None = None, encoding: str | None = None,
               member: str | None = None) -> RawTable:
    """Read a path, bytes (+ filename) or binary file object into a RawTable.

    Format, delimiter, header and encoding are detected unless given. For a zip, the most
    ratings-like member is read (or `member`). Raises DataError for anything unreadable.
    """
    blob = load_blob(source, filename, max_bytes=max_bytes)
    blob = open_member(blob, "interactions", member=member, max_bytes=max_bytes)
    return parse_blob(blob, delimiter=delimiter, has_header=has_header, encoding=encoding)


def open_member(blob: Blob, kind: str, *, member: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Blob:
    """`blob` itself, or for a zip its member `member` / the best member for `kind`."""
    if not is_zip(blob):
        return blob
    if member is None:
        return pick_member(blob, kind, max_bytes=max_bytes)
    for info in zip_members(blob):
        if info.filename == member:
            return read_member(blob, info, max_bytes=max_bytes)
    raise DataError(f"the archive has no member named '{member}'", file=blob.name,
                    hint="pick one of: " + ", ".join(i.filename for i in zip_members(blob)[:20]))


def parse_blob(blob: Blob, *, delimiter: str | None = None, has_header: bool | None = None,
               encoding: str | None = None) -> RawTable:
    """Parse a blob into a RawTable.

    Where parsing runs depends on trust (`source`): an upload (bytes, a file object, a member of an
    uploaded zip) is parsed in a limited child process (`isolated`), whatever its format, with the rows and
    the decoded bytes it may yield capped (`RECSYS_MAX_ROWS`, `RECSYS_MAX_READ_MB`), so a hostile file costs
    the child, never the server. A local path is trusted: parsed in this process (a big text or Parquet
    file straight from disk), with no row cap; JSON keeps the child even then, as its reader can segfault.
    One exception: uploaded text up to `INLINE_TEXT_BYTES` is parsed here, under the same caps: pyarrow's CSV
    reader is linear in its input, so 256 KB cannot cost more than a few MB and milliseconds, while a child
    interpreter costs ~0.6 s of CPU to start (pandas and pyarrow imports)."""
    if blob.path is not None and not _streamable(blob):
        blob = blob.whole()
    data = _strip_bom(blob)
    name = blob.name.lower()
    if data[:4] == b"PAR1" or name.endswith(_PARQUET_EXT):
        return _read_parquet(blob, data)
    if not data[:65536].strip() and not data.strip():
        raise DataError("the file is empty", file=blob.name,
                        hint="upload a file with one interaction per line, e.g. 'user,item,rating,timestamp'")
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            raise DataError(f"this is a {kind} file, not a table", file=blob.name,
                            hint="upload CSV, TSV, Parquet, JSON Lines, MovieLens .dat/u.data, or a .zip of one")
    if looks_binary(data):
        raise DataError("this looks like a binary file, not a text table", file=blob.name,
                        hint="upload CSV, TSV, Parquet, JSON Lines, MovieLens .dat/u.data, or a .zip of one")
    if name.endswith(_JSON_EXT) or data.lstrip()[:1] in (b"{", b"["):
        return _read_json(blob, data)
    options = {"delimiter": delimiter, "has_header": has_header, "encoding": encoding}
    if blob.trusted:
        frame, info, line_numbers = _text_table(blob, 0, 0, **options)
    elif len(data) <= INLINE_TEXT_BYTES or in_child():  # in the child: it is the limited process
        frame, info, line_numbers = _text_table(Blob(data, blob.name, blob.member), max_rows(), max_read_bytes(),
                                                **options)
    else:
        if data.count(b"\n") > max_rows():  # cheap, before any parsing: a row needs a line
            raise too_many_rows(blob.name, data.count(b"\n"), max_rows())
        frame, info = run_isolated(_text_child, Blob(data, blob.name, blob.member), max_rows(), max_read_bytes(),
                                   params=options, file=blob.name)
        frame, line_numbers = _split_line_column(frame, info)
    return RawTable(frame, blob.name, info["format"], info["delimiter"], info["has_header"], info["encoding"],
                    len(frame), blob.member, line_numbers, info["first_line"])


def _streamable(blob: Blob) -> bool:
    """A big local file pyarrow can take straight from disk: Parquet, or text with no byte-order mark or
    leading blank lines (both shift what the CSV reader would see); JSON is read whole."""
    head, name = blob.data, blob.name.lower()
    if head[:4] == b"PAR1" or name.endswith(_PARQUET_EXT):
        return True  # read by pyarrow from the path
    return not (name.endswith(_JSON_EXT) or head[:1] in b" \t\r\n{["
                or head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")))


def _strip_bom(blob: Blob) -> bytes:
    """The text as UTF-8 (or single-byte) bytes: a UTF-8 BOM dropped, UTF-16 with or without a BOM decoded."""
    data = blob.data
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:]
    utf16 = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else utf16_without_bom(data)
    if utf16 is not None:
        try:
            return data.decode(utf16).encode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"the file reads like UTF-16 text ({utf16}) but does not decode as UTF-16 (byte "
                            f"{err.start:,})", file=blob.name, hint="save it as UTF-8") from err
    return data


# ---- delimited text ---------------------------------------------------------------------------

INLINE_TEXT_BYTES = 256 << 10  # uploaded text at most this big is parsed in-process (see `parse_blob`)
_FORMATS = {",": "csv", "\t": "tsv", "::": "dat", "|": "psv", ";": "ssv", " ": "txt"}
_LINE_COLUMN = "\x00line"  # the child's extra column: file line per row, when blank lines shift them


def _text_child(blob: Blob, limit_rows: int, limit_bytes: int, delimiter: str | None = None,
                has_header: bool | None = None, encoding: str | None = None) -> tuple[pa.Table, dict]:
    """Runs in the parse child: a text table as Arrow, its line numbers as an extra column when needed."""
    frame, info, line_numbers = _text_table(blob, limit_rows, limit_bytes, delimiter=delimiter,
                                            has_header=has_header, encoding=encoding)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if line_numbers is not None:
        table = table.append_column(_LINE_COLUMN, pa.array(line_numbers, pa.int64()))
    return table, info


def _split_line_column(frame: pd.DataFrame, info: dict) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The child's frame without its line column, and that column; integer labels back on headerless tables."""
    line_numbers = None
    if _LINE_COLUMN in frame.columns:
        line_numbers = frame.pop(_LINE_COLUMN).to_numpy(dtype=np.int64)
    if not info["has_header"]:
        frame.columns = list(range(frame.shape[1]))
    return frame, line_numbers


def _text_table(blob: Blob, limit_rows: int, limit_bytes: int, *, delimiter: str | None = None,
                has_header: bool | None = None, encoding: str | None = None) -> tuple[pd.DataFrame, dict, np.ndarray | None]:
    """Sniff and read a delimited text blob: (frame, how it was read, file line per row or None).
    `limit_rows` / `limit_bytes` (0: none) stop the reader as soon as it has produced more."""
    data = _strip_bom(blob)
    # Leading blank lines would be taken for the header row; drop them and keep line numbers right.
    body = data.lstrip(b" \t\r\n") if data[:1] in (b" ", b"\t", b"\r", b"\n") else data
    skipped = data[: len(data) - len(body)].count(b"\n")
    layout = sniff_layout(body, blob.name, delimiter=delimiter, has_header=has_header, encoding=encoding)
    if blob.path is not None and len(layout.delimiter) > 1:
        blob = blob.whole()  # '::' is rewritten in memory before the reader sees it
        body = _strip_bom(blob)
    text = _Text(blob, body, skipped, limit_rows, limit_bytes)
    frame, used_encoding, line_numbers = _read_delimited(text, layout, forced_encoding=encoding is not None)
    if line_numbers is not None:
        line_numbers = line_numbers + skipped
    info = {"format": _FORMATS.get(layout.delimiter, "csv"), "delimiter": layout.delimiter,
            "has_header": layout.has_header, "encoding": used_encoding,
            "first_line": (2 if layout.has_header else 1) + skipped}
    return frame, info, line_numbers


@dataclass
class _Text:
    """The text to read: in memory, or (a trusted big file) on disk with only its head in memory."""

    blob: Blob
    head: bytes  # the whole text, unless `blob.path` is set
    line_offset: int
    limit_rows: int
    limit_bytes: int

    def source(self):
        return str(self.blob.path) if self.blob.path is not None else io.BytesIO(self.head)

    def whole(self) -> bytes:
        """All the text (read from disk for a streamed file: error paths and blank-line files only)."""
        return self.head if self.blob.path is None else _strip_bom(self.blob.whole())


def _single_char_delimiter(data: bytes, delimiter: str, file: str) -> tuple[bytes, str]:
    """pyarrow splits on one character: rewrite '::' to a control character the file lacks."""
    if len(delimiter) == 1:
        return data, delimiter
    for sub in ("\x1f", "\x1e", "\x1d", "\x1c", "\x01"):
        if sub.encode() not in data:
            return data.replace(delimiter.encode(), sub.encode()), sub
    raise DataError(f"cannot split on {delimiter!r}: the file also contains control characters",
                    file=file, hint="save the table as plain CSV")


def _read_delimited(text: _Text, layout: TextLayout, *, forced_encoding: bool
                    ) -> tuple[pd.DataFrame, str, np.ndarray | None]:
    blob = text.blob
    quote = '"' if len(layout.delimiter) == 1 else False  # MovieLens '::' files never quote
    # A quoted value may hold a newline; the reader then splits blocks quote-aware (slower, so only when the
    # text quotes at all): otherwise a quoted newline on a 16 MB block edge reads as a broken row.
    newlines = bool(quote) and b'"' in text.head
    if len(layout.delimiter) > 1:
        parsed, delim = _single_char_delimiter(text.head, layout.delimiter, blob.name)
        text = _Text(blob, parsed, text.line_offset, text.limit_rows, text.limit_bytes)
    else:
        delim = layout.delimiter
    encoding = layout.encoding
    try:
        table, bad = _arrow_csv(text, layout, delim, quote, encoding, newlines)
    except pa.ArrowInvalid as err:
        if "Could not skip" in str(err):  # the header is the only line
            raise DataError("the file has a header but no data rows", file=blob.name, line=2,
                            hint="add interactions below the header line") from err
        if "UTF8" not in str(err) or forced_encoding or encoding != "utf-8":
            raise _parse_error(blob, err) from err
        encoding = _fallback_encoding(blob, text.whole(), text.line_offset)
        try:
            table, bad = _arrow_csv(text, layout, delim, quote, encoding, newlines)
        except pa.ArrowInvalid as err2:
            raise _parse_error(blob, err2) from err2
    if bad:
        raise _field_count_error(blob, text.whole(), layout, encoding, bad, text.line_offset)
    if layout.strip:
        table = pa.table({n: pc.utf8_trim_whitespace(table[n]) for n in table.column_names})
    frame = table.to_pandas(self_destruct=True)
    del table
    if not layout.has_header:
        frame.columns = list(range(frame.shape[1]))
    if frame.empty:
        raise DataError("the file has a header but no data rows", file=blob.name, line=2,
                        hint="add interactions below the header line")
    return frame, encoding, _line_numbers_of(text, layout.has_header, len(frame))


def _fallback_encoding(blob: Blob, data: bytes, line_offset: int) -> str:
    """The file began as UTF-8 but is not UTF-8 further down. With no multi-byte UTF-8 character anywhere it
    is a single-byte file (latin-1), read as such; with both kinds, no single encoding fits, and reading it
    as latin-1 would turn every earlier 'naïve' into 'naÃ¯ve' silently, so it is refused, naming the byte."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start
    else:  # pragma: no cover - arrow reported invalid UTF-8, so decoding fails above
        return "utf-8"
    if not _UTF8_MULTIBYTE.search(data):
        return "latin-1"
    line = data.count(b"\n", 0, offset) + 1 + line_offset
    sample = data[offset:offset + 1].hex()
    raise DataError(
        f"mixed text encodings: byte {offset:,} (0x{sample}, line {line}) is not valid UTF-8, but earlier lines "
        "hold UTF-8 characters, so neither UTF-8 nor latin-1 / Windows-1252 reads the whole file correctly",
        file=blob.name, line=line,
        hint="re-save the file as UTF-8 (or choose its encoding when loading it), or fix that line")


# A lead byte followed by continuation bytes: a character that only UTF-8 writes this way.
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]")


def _arrow_csv(text: _Text, layout: TextLayout, delim: str, quote, encoding: str,
               newlines: bool = False) -> tuple[pa.Table, list[str]]:
    """Every column as text (large_string: what pandas keeps, so no copy on the way to the frame).
    With limits the file is read in blocks and abandoned at the first block past them."""
    bad: list[str] = []

    def on_invalid(row) -> str:
        if row.text.strip():
            bad.append(row.text)
        return "skip"  # whitespace-only lines are skipped silently, like empty ones

    names = layout.header
    options = {
        "read_options": pacsv.ReadOptions(column_names=names, skip_rows=1 if layout.has_header else 0,
                                          encoding=encoding, block_size=16 << 20),
        "parse_options": pacsv.ParseOptions(delimiter=delim, quote_char=quote, invalid_row_handler=on_invalid,
                                            newlines_in_values=newlines),
        "convert_options": pacsv.ConvertOptions(column_types={n: pa.large_string() for n in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
    }
    if not (text.limit_rows or text.limit_bytes):
        return pacsv.read_csv(text.source(), **options), bad
    reader = pacsv.open_csv(text.source(), **options)
    batches, rows, size = [], 0, 0
    for batch in reader:
        rows, size = rows + batch.num_rows, size + batch.nbytes
        if text.limit_rows and rows > text.limit_rows:
            raise too_many_rows(text.blob.name, rows, text.limit_rows, at_least=True)
        if text.limit_bytes and size > text.limit_bytes:
            raise ResourceError(f"the table's text takes more than {text.limit_bytes / 2**20:,.0f} MB once read, "
                                "over the read limit", file=text.blob.name,
                                hint=f"load a sample of the rows, or ask the operator to raise {READ_ENV}")
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=reader.schema), bad


def _parse_error(blob: Blob, err: Exception) -> DataError:
    text = str(err).splitlines()[0][:300]
    return DataError(f"cannot parse the file as a delimited table ({text})", file=blob.name,
                     hint="check for unbalanced quotes, or save the table again as plain CSV")


def _field_count_error(blob: Blob, data: bytes, layout: TextLayout, encoding: str, bad: list[str],
                       line_offset: int) -> DataError:
    """Name the lines with the wrong number of fields (a second, slow pass: error path only)."""
    examples, first = [], None
    lines = data.decode(encoding, errors="replace").splitlines()
    start = 1 if layout.has_header else 0
    skipped_header = False
    for number, line in enumerate(lines, start=1 + line_offset):
        if not line.strip():
            continue
        if start and not skipped_header:
            skipped_header = True
            continue
        n = len(split_line(line, layout.delimiter))
        if n != layout.n_fields:
            first = first or number
            examples.append(f"line {number} ({n} fields): {line[:120]}")
            if len(examples) >= min(5, len(bad)):  # found them all: the rest of a big file is not read
                break
    return DataError(
        f"{len(bad)} row(s) have the wrong number of fields (expected {layout.n_fields}, "
        f"separated by {layout.delimiter!r})",
        file=blob.name, line=first, examples=examples or [b[:120] for b in bad[:5]],
        hint="fix or delete those lines; a field containing the delimiter must be quoted",
    )


def _line_numbers_of(text: _Text, has_header: bool, n_rows: int) -> np.ndarray | None:
    """`_line_numbers` of the text; a streamed file is first scanned for blank lines in 16 MB pieces, and
    read whole only when it has some."""
    if text.blob.path is None:
        return _line_numbers(text.head, has_header, n_rows)
    newlines, last = 0, b"\n"
    with text.blob.path.open("rb") as fh:
        while piece := fh.read(16 << 20):
            newlines, last = newlines + piece.count(b"\n"), piece[-1:]
    lines = newlines + (last != b"\n")
    if lines == n_rows + has_header:  # every line is a row: nothing shifts
        return None
    return _line_numbers(text.whole(), has_header, n_rows)


def _line_numbers(data: bytes, has_header: bool, n_rows: int) -> np.ndarray | None:
    """File line of each data row when blank lines shift it; None when it is simply row + offset."""
    if not (data.startswith((b"\n", b"\r\n")) or re.search(rb"\n[ \t\r]*\n", data)):
        return None
    raw = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(raw == 10) + 1])
    starts = starts[starts < len(raw)]
    content = ~np.isin(raw, np.frombuffer(b" \t\r\n", dtype=np.uint8))
    has_content = np.add.reduceat(content, starts, dtype=np.int64) > 0
    lines = np.flatnonzero(has_content) + 1
    lines = lines[1:] if has_header else lines
    return lines[:n_rows] if len(lines) >= n_rows else None


# ---- Parquet and JSON ---------------------------------------------------------------------------

def _read_parquet(blob: Blob, data: bytes) -> RawTable:
    if blob.trusted:  # a local file: read here, from disk when it is big (`Blob.path`), with no caps
        frame, dropped = _parquet_frame(blob, 0, 0)
    elif in_child():  # the whole ingest already runs in the limited child: parse here, with the caps
        frame, dropped = _parquet_frame(Blob(data, blob.name, blob.member), max_rows(), max_read_bytes())
    else:  # untrusted bytes: parsed in a limited child process (`isolated`), so a crash cannot kill the server
        frame, dropped = run_isolated(_parquet_frame, Blob(data, blob.name, blob.member), max_rows(),
                                      max_read_bytes(), file=blob.name)
    if frame.empty:
        raise DataError("the Parquet file has no rows", file=blob.name, hint="upload a file with interactions")
    frame.columns = [str(c) for c in frame.columns]
    notes = [f"nested columns left out (lists and maps are not table values): {', '.join(dropped)}"][:len(dropped)]
    return RawTable(frame, blob.name, "parquet", None, True, None, len(frame), blob.member, notes=notes)


def _parquet_frame(blob: Blob, limit_rows: int, limit_bytes: int) -> tuple[pd.DataFrame, list[str]]:
    """Runs in the parse child: the Parquet file as a frame, after checking its size from the footer, and the
    nested columns left out. Structs are flattened into plain columns ('event.user'); lists and maps are left
    out, and a file with fewer than two plain columns is refused naming them. Limits of 0 mean none (a
    trusted local file, read from `blob.path` when set)."""
    try:
        parquet = pq.ParquetFile(str(blob.path) if blob.path is not None else pa.BufferReader(blob.data))
        meta = parquet.metadata
        if limit_rows and meta.num_rows > limit_rows:
            raise too_many_rows(blob.name, meta.num_rows, limit_rows)
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if limit_bytes and unpacked > limit_bytes:
            raise ResourceError(f"the Parquet file unpacks to {unpacked / 2**20:,.0f} MB, over the "
                                f"{limit_bytes / 2**20:,.0f} MB read limit", file=blob.name,
                                hint=f"load a sample of the rows, or ask the operator to raise {READ_ENV}")
        if meta.num_columns > MAX_COLUMNS:
            raise too_many_columns(meta.num_columns, blob.name)
        table = parquet.read()
        while any(pa.types.is_struct(f.type) for f in table.schema):
            table = table.flatten()
        dropped = [f"{f.name} ({f.type})"[:120] for f in table.schema if pa.types.is_nested(f.type)]
        table = table.select([f.name for f in table.schema if not pa.types.is_nested(f.type)])
        if dropped and table.num_columns < 2:
            raise DataError(f"the Parquet file has nested columns ({', '.join(dropped[:5])}), which are not table "
                            "columns, and fewer than two plain columns besides", file=blob.name,
                            hint="write user and item (and rating, timestamp) as plain columns, e.g. flatten the "
                                 "table with pandas.json_normalize before to_parquet, or upload CSV")
        return table.to_pandas(), dropped
    except RecsysError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as err:
        if isinstance(err, MemoryError):
            raise
        raise DataError(f"not a readable Parquet file ({str(err)[:200]})", file=blob.name,
                        hint="write it again with pandas.DataFrame.to_parquet, or upload CSV") from err


def _read_json(blob: Blob, data: bytes) -> RawTable:
    if data.count(b"\n") > max_rows():  # cheap, before any parsing: one record per line at most
        raise too_many_rows(blob.name, data.count(b"\n"), max_rows())
    # Untrusted bytes: pyarrow's JSON reader segfaults on deep nesting, so it runs in a limited child.
    if in_child():  # the whole ingest already runs in the limited child
        frame, fmt = _json_frame(Blob(data, blob.name, blob.member), max_rows())
    else:
        frame, fmt = run_isolated(_json_frame, Blob(data, blob.name, blob.member), max_rows(), file=blob.name)
    if frame.empty or frame.shape[1] == 0:
        raise DataError("the JSON file has no records", file=blob.name,
                        hint='write one object per line, e.g. {"user": "1", "item": "42", "rating": 5}')
    frame.columns = [str(c) for c in frame.columns]
    return RawTable(frame, blob.name, fmt, None, True, "utf-8", len(frame), blob.member)


def _json_frame(blob: Blob, limit_rows: int) -> tuple[pd.DataFrame, str]:
    """Runs in the parse child: a JSON array or JSON Lines file as a frame, and which of the two it was."""
    if blob.data.lstrip()[:1] == b"[":
        frame, fmt = _json_array(blob, blob.data), "json"
    else:
        try:
            options = pajson.ReadOptions(block_size=16 << 20)
            frame, fmt = pajson.read_json(io.BytesIO(blob.data), read_options=options).to_pandas(), "jsonl"
        except (pa.ArrowException, ValueError) as err:
            if isinstance(err, MemoryError):
                raise
            raise _json_line_error(blob, blob.data, err) from err
    if len(frame) > limit_rows:
        raise too_many_rows(blob.name, len(frame), limit_rows)
    return frame, fmt


def _json_array(blob: Blob, data: bytes) -> pd.DataFrame:
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        line = getattr(err, "lineno", None)
        raise DataError(f"not valid JSON ({err})", file=blob.name, line=line,
                        hint="upload JSON Lines (one object per line) or a JSON array of objects") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError("the JSON file is not a list of objects", file=blob.name,
                        hint='use [{"user": ..., "item": ..., "rating": ...}, ...] or JSON Lines')
    return pd.DataFrame.from_records(records)


def _json_line_error(blob: Blob, data: bytes, err: Exception) -> DataError:
    examples, first = [], None
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            ok = isinstance(value, dict)
        except (json.JSONDecodeError, RecursionError):
            ok = False
        if not ok:
            first = first or number
            examples.append(f"line {number}: {line[:120]}")
            if len(examples) >= 5:
                break
    return DataError(f"cannot read the JSON Lines file ({str(err).splitlines()[0][:200]})", file=blob.name,
                     line=first, examples=examples,
                     hint="each line must be one JSON object with the same fields, e.g. "
                          '{"user": "1", "item": "42", "rating": 5}')
