"""Getting a file's bytes: from a path, raw bytes (a Streamlit upload) or a zip member.

Everything is checked against a size limit first; zip members are never extracted to disk, and a
member whose name tries to escape (`../x`, `/etc/x`) rejects the archive.

Trust: bytes and file objects are uploads, untrusted: their tables are parsed in a limited child
process (`isolated`). A path is a file the operator or the CLI named on this machine, trusted: it is
parsed in this process, and a big plain table is not read into memory at all (`Blob.path`: the parser
streams it from disk), so a 20M-row CSV costs its parsed columns, not also a copy of its text.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from recsys_core.errors import DataError, ResourceError

DEFAULT_MAX_BYTES = 500 * 1024 * 1024

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Zip members we know are not interactions or metadata (MovieLens extras, macOS resource forks).
_NOISE = re.compile(r"(^|/)(__MACOSX/|\.)|(^|/)(readme|license|u\.info|u\.genre|u\.occupation|u\.user|users\.dat)"
                    r"($|\.)", re.IGNORECASE)
_TEXTY = (".csv", ".tsv", ".txt", ".dat", ".data", ".item", ".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".base", ".test")
_ITEM_NAMES = re.compile(r"(^|/)(movies\.(dat|csv)|u\.item|items?\.(csv|tsv|parquet|jsonl)|books\.csv)$", re.IGNORECASE)
_RATING_NAMES = [
    re.compile(r"(^|/)ratings\.(dat|csv|tsv|parquet|jsonl)$", re.IGNORECASE),
    re.compile(r"(^|/)u\.data$", re.IGNORECASE),
    re.compile(r"(^|/)(ratings|interactions|events)[^/]*$", re.IGNORECASE),
]


@dataclass
class Blob:
    """A file's content in memory plus the name to show in messages."""

    data: bytes
    name: str
    member: str | None = None  # set when the bytes came out of a zip
    trusted: bool = False  # a local path (or a member of one): parsed in-process; else an upload
    # Set when `data` holds only the first HEAD_BYTES of a big local file; `whole()` reads the rest.
    path: Path | None = None

    def whole(self) -> Blob:
        """This blob with all its bytes in memory."""
        if self.path is None:
            return self
        return Blob(self.path.read_bytes(), self.name, self.member, self.trusted)


HEAD_BYTES = 1 << 20  # what a big local file shows of itself before it is streamed
_STREAM_FROM = 32 << 20  # local files above this size are streamed from disk, not read into memory


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _too_big(name: str, size: int, max_bytes: int) -> ResourceError:
    return ResourceError(
        f"the file is {_mb(size)}, over the {_mb(max_bytes)} limit",
        file=name,
        hint="load a smaller sample, or raise the limit (LoadOptions.max_bytes / max_bytes=)",
    )


def load_blob(source: Source, filename: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Blob:
    """Read `source` (path, bytes, or binary file object) into memory, enforcing `max_bytes`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = filename or "uploaded file"
        if len(data) > max_bytes:
            raise _too_big(name, len(data), max_bytes)
        return Blob(data, name)
    if hasattr(source, "read"):
        name = filename or getattr(source, "name", None) or "uploaded file"
        data = source.read(max_bytes + 1)
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(data) > max_bytes:
            raise _too_big(str(name), len(data), max_bytes)
        return Blob(bytes(data), str(name))
    path = Path(source)
    name = filename or path.name
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise DataError("this is a folder, not a file", file=str(path),
                            hint="pick the ratings file inside it (e.g. u.data or ratings.dat)")
        if size > max_bytes:
            raise _too_big(name, size, max_bytes)
        if size > _STREAM_FROM and not name.lower().endswith(".zip"):
            with path.open("rb") as fh:
                head = fh.read(HEAD_BYTES)
            if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
                return Blob(head, name, trusted=True, path=path)
        return Blob(path.read_bytes(), name, trusted=True)
    except FileNotFoundError as err:
        raise DataError("file not found", file=str(path), hint="check the path") from err
    except PermissionError as err:
        raise DataError("permission denied while reading the file", file=str(path),
                        hint="check the file's permissions") from err


def is_zip(blob: Blob) -> bool:
    return blob.data[:4] in (b"PK\x03\x04", b"PK\x05\x06") or blob.name.lower().endswith(".zip")


def _check_member_name(archive: str, name: str) -> None:
    """Reject names that would escape a target folder if anyone ever extracted the archive."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in pure.parts:
        raise DataError(
            f"the archive contains an unsafe member name '{name}' (absolute path or '..')",
            file=archive,
            hint="this archive may be malicious; re-create it with plain relative file names",
        )


def zip_directory(data: bytes) -> tuple[int, int] | None:
    """(members listed, central directory bytes) from a zip's end record, before anything is parsed; None when
    there is no end record. Python's zipfile reads the directory by its size, not its count, so both count."""
    tail_at = max(0, len(data) - (1 << 16) - 22)
    at = data.rfind(b"PK\x05\x06", tail_at)
    if at < 0 or len(data) < at + 22:
        return None
    entries, size = int.from_bytes(data[at + 10:at + 12], "little"), int.from_bytes(data[at + 12:at + 16], "little")
    locator = at - 20
    if (entries == 0xFFFF or size == 0xFFFFFFFF) and locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        offset = int.from_bytes(data[locator + 8:locator + 16], "little")
        record = data[offset:offset + 56]
        if record[:4] != b"PK\x06\x06":
            return None
        entries, size = int.from_bytes(record[32:40], "little"), int.from_bytes(record[40:48], "little")
    return entries, size


_ENTRY_BYTES = 1024  # a generous central-directory entry (46 bytes plus its name and extras)


def check_upload_zip(blob: Blob, max_members: int, max_unpacked: int) -> list[zipfile.ZipInfo]:
    """Refuse an uploaded zip listing more than `max_members` members, or whose members add up to more than
    `max_unpacked` bytes, from its directory alone: before any member is read (a zip of 10^6 empty members
    cost 49 s and 1.3 GB to list, 2,000 members of 1 MiB unpack 2 GB from 2.3 MB)."""
    found = zip_directory(blob.data)
    if found is not None and (found[0] > max_members or found[1] > max_members * _ENTRY_BYTES):
        listed = max(found[0], found[1] // _ENTRY_BYTES)
        raise ResourceError(f"the archive lists {listed:,} members, over the limit of {max_members:,}",
                            file=blob.name, hint="zip only the ratings file (and its item metadata), or upload the "
                                                 "file itself; the operator sets the limits with RECSYS_INGEST_MEMORY_MB")
    infos = _infolist(blob)
    if len(infos) > max_members:
        raise ResourceError(f"the archive lists {len(infos):,} members, over the limit of {max_members:,}",
                            file=blob.name, hint="zip only the ratings file (and its item metadata)")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > max_unpacked:
        raise ResourceError(f"the archive unpacks to {_mb(unpacked)}, over the {_mb(max_unpacked)} limit",
                            file=blob.name, hint="zip only the ratings file (and its item metadata), or load a sample; "
                                                 "the operator sets the limits with RECSYS_INGEST_MEMORY_MB")
    return infos


def _infolist(blob: Blob) -> list[zipfile.ZipInfo]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob.data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(f"not a readable zip archive ({err})", file=blob.name,
                        hint="re-create the archive, or upload the ratings file itself") from err
    return infos


def zip_members(blob: Blob) -> list[zipfile.ZipInfo]:
    """Usable file members of a zip, after rejecting unsafe names. An upload's directory is checked first
    (`check_upload_zip`, limits from `isolated`)."""
    if blob.trusted:
        infos = _infolist(blob)
    else:
        from recsys_core.data import isolated  # isolated imports this module: the limits are read at call time

        infos = check_upload_zip(blob, isolated.max_members(), isolated.max_read_bytes())
    for info in infos:
        _check_member_name(blob.name, info.filename)
    return [i for i in infos if not i.is_dir() and not _NOISE.search(i.filename)]


def _rank(name: str, kind: str) -> int | None:
    """Lower is better; None means the member is not a candidate for `kind`."""
    lower = name.lower()
    if not lower.endswith(_TEXTY) and "." in PurePosixPath(lower).name:
        return None
    if kind == "items":
        return 0 if _ITEM_NAMES.search(name) else None
    if _ITEM_NAMES.search(name):
        return None
    for rank, pattern in enumerate(_RATING_NAMES):
        if pattern.search(name):
            return rank
    # MovieLens 100K ships u1.base..u5.test splits beside u.data: usable but never preferred.
    return len(_RATING_NAMES) + (1 if re.search(r"\.(base|test)$", lower) else 0)


def pick_member(blob: Blob, kind: str = "interactions", *, max_bytes: int = DEFAULT_MAX_BYTES,
                required: bool = True) -> Blob | None:
    """The best zip member for `kind` ('interactions' or 'items'), read into memory."""
    infos = zip_members(blob)
    ranked = [(r, -i.file_size, i) for i in infos if (r := _rank(i.filename, kind)) is not None]
    if not ranked:
        if not required:
            return None
        names = ", ".join(i.filename for i in infos[:10]) or "no files"
        if any(i.filename.startswith("xl/") for i in infos):
            hint = "this looks like an Excel workbook: save the sheet as CSV and upload that"
        else:
            hint = "put a ratings file (CSV, TSV, Parquet, JSON Lines, ratings.dat or u.data) in the archive"
        raise DataError(f"the archive has no usable {kind} file (found: {names})", file=blob.name, hint=hint)
    _, _, info = min(ranked, key=lambda t: (t[0], t[1], t[2].filename))
    return read_member(blob, info, max_bytes=max_bytes)


def read_member(blob: Blob, info: zipfile.ZipInfo, *, max_bytes: int) -> Blob:
    label = f"{blob.name}/{info.filename}"
    if info.file_size > max_bytes:
        raise _too_big(label, info.file_size, max_bytes)
    # Real tables compress 3-20x; a member inflating far more is a zip bomb, whatever its header says. Every
    # member is checked: `RATIO_SLACK` only spares tiny members the fixed cost of compression.
    ratio_cap = RATIO_SLACK + MAX_EXPANSION * max(1, info.compress_size)
    if info.file_size > ratio_cap:
        raise _bomb(label, info.file_size, info.compress_size)
    try:
        with zipfile.ZipFile(io.BytesIO(blob.data)) as zf, zf.open(info) as fh:
            data = _read_capped(fh, min(max_bytes, ratio_cap) + 1)  # a lying header cannot inflate a bomb
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as err:
        raise DataError(f"cannot decompress member '{info.filename}' ({err})", file=blob.name,
                        hint="re-create the archive without encryption, using ordinary deflate compression") from err
    if len(data) > max_bytes:
        raise _too_big(label, len(data), max_bytes)
    if len(data) > ratio_cap:
        raise _bomb(label, len(data), info.compress_size)
    return Blob(data, label, member=info.filename, trusted=blob.trusted)


MAX_EXPANSION = 100  # uncompressed / compressed size of one archive member
RATIO_SLACK = 64 << 10  # bytes a member may unpack to beyond the ratio (a 1 KB file cannot compress 100x)


def _read_capped(fh, limit: int) -> bytes:
    """At most `limit` bytes, read in 1 MB pieces so a lying header costs no more than the limit."""
    parts, total = [], 0
    while total < limit and (piece := fh.read(min(1 << 20, limit - total))):
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


def _bomb(label: str, size: int, compressed: int) -> ResourceError:
    return ResourceError(
        f"the archive member expands {size / max(1, compressed):,.0f} times ({_mb(size)} from {_mb(compressed)}), "
        f"over the {MAX_EXPANSION}x limit for archives", file=label,
        hint="upload the file itself, or an archive made with ordinary compression")
