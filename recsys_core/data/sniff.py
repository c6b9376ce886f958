"""Guessing how a text table is written: encoding, delimiter, whether line 1 is a header.

Works on a sample (the first 64 KB), so a guess costs the same for 1 KB and 500 MB files.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass

from recsys_core.data.names import KNOWN_HEADER_WORDS, normalize
from recsys_core.errors import DataError

SAMPLE_BYTES = 64 * 1024
SAMPLE_LINES = 200
MAX_COLUMNS = 1000  # columns a table may have: an interactions file has a handful
# Tried in this order; earlier wins a tie. '::' is MovieLens 1M / MovieTweetings.
DELIMITERS = ["::", "\t", ",", ";", "|"]
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_BINARY_CONTROL = set(range(32)) - {9, 10, 13, 12}


@dataclass
class TextLayout:
    encoding: str
    delimiter: str
    has_header: bool
    header: list[str]
    n_fields: int
    strip: bool  # fields carry spaces around delimiters ("1, 2, 5")


def is_number(text: str) -> bool:
    return bool(_NUMBER.match(text))


def looks_binary(data: bytes) -> bool:
    """NUL bytes or many control characters in the first 8 KB mean this is no text table."""
    head = data[:8192]
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b in _BINARY_CONTROL)
    return len(head) > 0 and controls / len(head) > 0.05


def utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le' / 'utf-16-be' when the head reads as UTF-16 text without a byte-order mark: most of its
    odd (LE) or even (BE) bytes are NUL and the others are not; else None (NUL bytes then mean binary)."""
    head = data[:8192]
    if len(head) < 4 or b"\x00" not in head:
        return None
    even, odd = head[0::2], head[1::2]
    zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zeros_odd > 0.9 and zeros_even < 0.05:
        return "utf-16-le"
    if zeros_even > 0.9 and zeros_odd < 0.05:
        return "utf-16-be"
    return None


def too_many_columns(n: int, file: str, *, at_least: bool = False) -> DataError:
    count = f"at least {n:,}" if at_least else f"{n:,}"
    return DataError(f"the file has {count} columns, over the limit of {MAX_COLUMNS:,} columns", file=file, line=1,
                     hint="an interactions table needs a user and an item column (optional rating, count, "
                          "timestamp): keep those columns and save it again")


def _check_width(data: bytes, file: str) -> None:
    """A first line longer than the sample holds its columns beyond what the sample sees: count them on the
    whole line (the widest split by any delimiter), so 100,000 columns are named, not a cut-off sample's."""
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)]
    if len(first) <= SAMPLE_BYTES:
        return
    widest = max(first.count(d.encode()) for d in DELIMITERS if len(d) == 1) + 1
    if widest > MAX_COLUMNS:
        raise too_many_columns(widest, file, at_least=b'"' in first)


def sample_text(data: bytes) -> tuple[str, str]:
    """Decode the first complete lines of `data`; returns (text, encoding) trying UTF-8 then latin-1."""
    sample = data[:SAMPLE_BYTES]
    if len(data) > SAMPLE_BYTES and b"\n" in sample:
        sample = sample[: sample.rindex(b"\n")]
    try:
        return sample.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return sample.decode("latin-1"), "latin-1"


def _field_counts(lines: list[str], delimiter: str) -> list[int]:
    if len(delimiter) > 1:
        return [line.count(delimiter) + 1 for line in lines]
    try:
        return [len(row) for row in csv.reader(lines, delimiter=delimiter)]
    except csv.Error:
        return [line.count(delimiter) + 1 for line in lines]


def guess_delimiter(lines: list[str], file: str) -> tuple[str, int]:
    """The delimiter that splits most lines into the same number (>= 2) of fields."""
    best: tuple[float, int, str, int] | None = None
    for order, delim in enumerate(DELIMITERS + [" "]):
        if delim == " " and best is not None:
            break  # spaces inside titles make ' ' a last resort only
        counts = _field_counts(lines, delim)
        n_fields, hits = Counter(counts).most_common(1)[0]
        share = hits / len(counts)
        if n_fields < 2 or share < (1.0 if delim == " " else 0.5):
            continue
        if best is None or share > best[0] + 1e-9:
            best = (share, -order, delim, n_fields)
    if best is None:
        raise DataError(
            "cannot find a column delimiter: the lines do not split into the same number of fields "
            "on any of , ; | tab :: or space",
            file=file,
            line=1,
            examples=[repr(line[:120]) for line in lines[:3]],
            hint="save the table as CSV with one interaction per line, e.g. 'user,item,rating,timestamp'",
        )
    return best[2], best[3]


def split_line(line: str, delimiter: str) -> list[str]:
    if len(delimiter) > 1:
        return line.split(delimiter)
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return line.split(delimiter)


def guess_header(rows: list[list[str]]) -> bool:
    """Line 1 is a header if it names a known column, or is text where the data below is numeric."""
    first = rows[0]
    if any(normalize(f) in KNOWN_HEADER_WORDS for f in first):
        return True
    body = rows[1:]
    if not body:
        return not any(is_number(f) for f in first)
    for j, name in enumerate(first):
        column = [r[j] for r in body if j < len(r) and r[j].strip()]
        if column and not is_number(name) and name.strip() and all(is_number(v) for v in column):
            return True
    return False


def unique_names(names: list[str]) -> list[str]:
    """Header names made non-empty and unique (pandas-style '.1' suffixes)."""
    out: list[str] = []
    seen: Counter = Counter()
    for j, raw in enumerate(names):
        name = raw.strip().strip('"').strip() or f"column_{j + 1}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}.{seen[name] - 1}")
    return out


def sniff_layout(data: bytes, file: str, *, delimiter: str | None = None, has_header: bool | None = None,
                 encoding: str | None = None) -> TextLayout:
    """Detect encoding, delimiter and header of a delimited text file (any can be forced)."""
    _check_width(data, file)
    text, detected = sample_text(data)
    if encoding:
        text = data[:SAMPLE_BYTES].decode(encoding, errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()][:SAMPLE_LINES]
    if not lines:
        raise DataError("the file is empty (no non-blank lines)", file=file,
                        hint="upload a file with one interaction per line, e.g. 'user,item,rating,timestamp'")
    if delimiter is None:
        delimiter, n_fields = guess_delimiter(lines, file)
    else:
        n_fields = Counter(_field_counts(lines, delimiter)).most_common(1)[0][0]
    if n_fields > MAX_COLUMNS:
        raise too_many_columns(n_fields, file)
    rows = [split_line(ln, delimiter) for ln in lines]
    header = guess_header(rows) if has_header is None else has_header
    strip = any(f != f.strip() for row in rows[1:20] for f in row)
    names = unique_names(rows[0]) if header else [str(j) for j in range(n_fields)]
    if header and len(names) != n_fields and len(rows) > 1:
        raise DataError(
            f"the header names {len(names)} columns but the rows below have {n_fields} fields",
            file=file, line=1, examples=[lines[0][:200], lines[1][:200]],
            hint="make the header list exactly one name per column",
        )
    return TextLayout(encoding or detected, delimiter, header, names, len(names), strip)
