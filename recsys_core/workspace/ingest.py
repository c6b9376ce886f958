"""An upload, from bytes to a saved dataset, with the server process holding only bounded results.

A hostile upload can be small and still expand: a 16 KB Parquet of dictionary-encoded strings became
8 GB once validation turned every row into a Python string, a 5.4 MB zip held 45.7 M valid rows. So the
whole ingest of an upload runs in the limited child of `data.isolated` (memory, CPU and wall clock from
`RECSYS_INGEST_MEMORY_MB`; rows, unpacked bytes and zip members derived from it):

- `preview_upload`: parse, infer the column mapping on the WHOLE table, and send back only its first
  `PREVIEW_ROWS` rows, the row count and the mapping (what the Data page shows and proposes);
- `ingest_upload`: parse, validate, filter, build the `Dataset` and save it into the workspace, all in the
  child, which sends back only the report; the server reads the saved record from the workspace db.

Small plain text (at most `read.INLINE_TEXT_BYTES`, not a zip) is previewed in this process: its reader is
linear and its columns are capped (`sniff.MAX_COLUMNS`), so it costs a few MB and saves the child's start.
Trusted local files (the CLI, `recsys ingest`) do not come here: they call `data.load_dataset` in-process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa

from recsys_core.data.isolated import run_isolated
from recsys_core.data.load import LoadOptions, LoadReport, load_dataset
from recsys_core.data.mapping import infer_mapping
from recsys_core.data.read import INLINE_TEXT_BYTES, RawTable, open_member, parse_blob
from recsys_core.data.source import DEFAULT_MAX_BYTES, Blob, is_zip, load_blob, zip_members
from recsys_core.errors import DataError
from recsys_core.workspace.registry import DatasetRecord, Workspace

PREVIEW_ROWS = 200  # rows of an upload the server receives for the preview table and the mapping form


@dataclass
class Preview:
    """What the Data page shows of an upload: the first rows, and the mapping inferred on every row."""

    raw: RawTable  # `raw.frame` holds the first PREVIEW_ROWS rows; `raw.n_rows` counts the whole table
    mapping: dict | None  # role -> column, None when detection needs the user's help
    problem: DataError | None  # why detection needs help
    reasons: list[str]  # why columns got their roles when that came from their content


def preview_upload(data: bytes, filename: str) -> Preview:
    """Parse an upload and return its `Preview`; a RecsysError for a file that cannot be read."""
    blob = load_blob(data, filename, max_bytes=DEFAULT_MAX_BYTES)
    if is_zip(blob):
        zip_members(blob)  # its member count and unpacked size, from its directory: no child needed to refuse it
    elif len(blob.data) <= INLINE_TEXT_BYTES:
        table, info = _preview_child(blob, PREVIEW_ROWS)  # Parquet and JSON still go to the child inside
        return _preview_from(table.to_pandas(), info)
    frame, info = run_isolated(_preview_child, blob, PREVIEW_ROWS, file=blob.name)
    return _preview_from(frame, info)


def _preview_child(blob: Blob, rows: int) -> tuple[pa.Table, dict]:
    """In the child (or in-process for small text): the first `rows` rows as Arrow, and what the page needs."""
    inner = open_member(blob, "interactions")
    raw = parse_blob(inner)
    mapping, problem, reasons = None, None, []
    try:
        found = infer_mapping(raw.frame, file=raw.file)
        mapping, reasons = found.as_dict(), list(found.reasons)
    except DataError as err:
        problem = {"message": err.message, "file": err.file, "hint": err.hint}
    head = raw.frame.head(rows)
    table = pa.Table.from_pandas(head.rename(columns=str), preserve_index=False)
    info = {"file": raw.file, "format": raw.format, "delimiter": raw.delimiter, "has_header": raw.has_header,
            "encoding": raw.encoding, "n_rows": raw.n_rows, "member": raw.member, "first_line": raw.first_line,
            "mapping": mapping, "problem": problem, "reasons": reasons}
    return table, json.loads(json.dumps(info))  # the same JSON values in-process as through the pipe


def _preview_from(frame: pd.DataFrame, info: dict) -> Preview:
    if not info["has_header"]:
        frame.columns = list(range(frame.shape[1]))
    raw = RawTable(frame, info["file"], info["format"], info["delimiter"], info["has_header"], info["encoding"],
                   info["n_rows"], info["member"], None, info["first_line"])
    problem = info["problem"]
    return Preview(raw, info["mapping"], None if problem is None else DataError(**problem), info["reasons"])


def ingest_upload(ws: Workspace, data: bytes, filename: str, *, mapping: dict | None = None,
                  items: bytes | None = None, items_filename: str | None = None, options: LoadOptions | None = None,
                  name: str, overwrite: bool = False) -> tuple[DatasetRecord, LoadReport]:
    """Load, validate and save an upload (plus optional item metadata bytes) in the limited child.

    Returns the saved record (read back from the workspace) and the load report; raises the RecsysError the
    child raised, or a ResourceError when it ran out of memory or time. Nothing is saved on any error."""
    options = options or LoadOptions()
    options.check()
    blob = load_blob(data, filename, max_bytes=options.max_bytes)
    if is_zip(blob):
        zip_members(blob)
    extra = b"" if items is None else load_blob(items, items_filename, max_bytes=options.max_bytes).data
    params = {"root": str(ws.root), "filename": filename, "mapping": mapping, "has_items": items is not None,
              "items_filename": items_filename, "options": options.to_dict(), "name": name, "overwrite": overwrite}
    try:
        json.dumps(params)
    except TypeError as err:
        raise DataError("the column mapping names a column that is not a text or number label", file=filename,
                        hint="choose the columns again in the column mapping") from err
    _, reply = run_isolated(_ingest_child, Blob(blob.data, blob.name), len(blob.data), file=blob.name,
                            params=params, extra=extra)
    record = ws.get_dataset(reply["name"])
    if record is None:  # removed by another session between the save and this read
        raise DataError(f"the dataset {reply['name']!r} was saved but is gone now", file=filename,
                        hint="load the file again")
    return record, LoadReport(**reply["report"])


def _ingest_child(blob: Blob, n_data: int, *, root: str, filename: str, mapping: dict | None, has_items: bool,
                  items_filename: str | None, options: dict, name: str, overwrite: bool) -> tuple[None, dict]:
    """In the child: the whole ingest of one upload; only the saved name and the report go back."""
    data, items = blob.data[:n_data], (blob.data[n_data:] if has_items else None)
    ds, report = load_dataset(data, filename, mapping=mapping, items=items, items_filename=items_filename,
                              options=LoadOptions(**options), name=name)
    del data, items
    record = Workspace(root).save_dataset(ds, name=name, source_file=filename, overwrite=overwrite)
    return None, {"name": record.name, "report": asdict(report)}
