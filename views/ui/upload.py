"""Upload handling for the Data page, driven by bytes so tests can call it without a browser.

No Streamlit here: the page passes what the widgets hold, this module calls the engine and the
workspace. Any bad input surfaces as a `RecsysError` and leaves the workspace untouched (the
dataset is saved only after the whole load succeeded). Parsing, validating and saving an upload run in
the engine's limited child process (`recsys_core.workspace.ingest`): the server only ever holds the
preview's first rows, the report and the saved record.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from recsys_core.data import DEFAULT_MAX_BYTES, DUPLICATE_POLICIES, LoadOptions, LoadReport, mapping_candidates
from recsys_core.errors import DataError
from recsys_core.workspace.ingest import Preview, ingest_upload, preview_upload
from recsys_core.workspace.registry import NAME_RULE, DatasetRecord, Workspace, safe_name, validate_name

__all__ = ["DEDUP_LABELS", "DUPLICATE_POLICIES", "INTERACTION_TYPES", "ITEM_TYPES", "MAX_UPLOAD_MB", "NAME_HELP", "NONE", "ROLES",
           "UploadResult", "column_label", "default_mapping", "ingest", "make_options", "preview", "safe_name"]

NONE = "(none)"  # selectbox entry for an optional column the file does not have
ROLES = ("user", "item", "rating", "count", "timestamp")
OPTIONAL_ROLES = ("rating", "count", "timestamp")
# Extensions offered by the uploaders (what `read_table` / `read_items` understand).
INTERACTION_TYPES = ["csv", "tsv", "txt", "dat", "data", "base", "test", "parquet", "pq", "jsonl", "ndjson", "json",
                     "zip"]
ITEM_TYPES = ["csv", "tsv", "txt", "dat", "item", "parquet", "pq", "jsonl", "ndjson", "json", "zip"]
DEDUP_LABELS = {
    "keep_last": "Keep the latest of each pair",
    "keep_first": "Keep the earliest of each pair",
    "keep_all": "Keep all (repeat interactions)",
    "error": "Refuse the file",
}
# The browser-side limit matches the engine's, so a file is never accepted by one and refused by the other.
MAX_UPLOAD_MB = DEFAULT_MAX_BYTES // 2**20
NAME_HELP = f"Name in the workspace ({NAME_RULE}). A name already taken is refused unless you choose to replace it."


def preview(data: bytes, filename: str) -> Preview:
    """Parse the uploaded bytes (format, delimiter, header and encoding are detected): the first rows, the
    row count and the column mapping detected on every row."""
    return preview_upload(data, filename)


def column_label(column: Hashable) -> str:
    """How a column is shown: headerless files have integer columns, shown 1-based."""
    if column == NONE:
        return NONE
    return f"column {column + 1}" if isinstance(column, int) else str(column)


def default_mapping(found: Preview) -> tuple[dict[str, Hashable], DataError | None, list[str]]:
    """Auto-detected column per role (NONE for absent optional roles), the detection problem if any, and
    why columns got their roles when that came from their content (a count is not a rating).

    When detection fails (e.g. two columns could both be the user), each role gets its best-ranked
    candidate so the user corrects a proposal instead of facing an empty form.
    """
    if found.mapping is None:
        cands = mapping_candidates(found.raw.frame)
        first = {role: (cands.get(role) or [NONE])[0] for role in ("user", "item")}
        return {**first, **dict.fromkeys(OPTIONAL_ROLES, NONE)}, found.problem, []
    m = found.mapping
    return {role: NONE if m.get(role) is None else m[role] for role in ROLES}, None, found.reasons


def make_options(implicit_threshold: float | None, min_user: int, min_item: int, duplicates: str) -> LoadOptions:
    return LoadOptions(implicit_threshold=implicit_threshold, min_user_interactions=int(min_user),
                       min_item_interactions=int(min_item), duplicates=duplicates)


@dataclass
class UploadResult:
    record: DatasetRecord
    report: LoadReport


def ingest(
    ws: Workspace,
    data: bytes,
    filename: str,
    *,
    mapping: dict[str, Hashable] | None = None,
    items: bytes | None = None,
    items_filename: str | None = None,
    options: LoadOptions | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> UploadResult:
    """Load, validate and save an uploaded interactions file (plus optional item metadata).

    `mapping` is role -> column as chosen in the form (NONE for an unmapped optional role); None
    lets the engine detect it. Raises a RecsysError (nothing saved) on any problem with the files, the
    mapping, the options or the name.
    """
    name = validate_name(name.strip()) if name and name.strip() else safe_name(filename)
    if mapping is not None:
        mapping = {role: None if mapping.get(role, NONE) == NONE else mapping[role] for role in ROLES}
    record, report = ingest_upload(ws, data, filename, mapping=mapping, items=items, items_filename=items_filename,
                                   options=options or LoadOptions(), name=name, overwrite=overwrite)
    return UploadResult(record, report)
