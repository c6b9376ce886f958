"""Importing a saved model folder that a user uploads as a zip, validated before anything is used.

A zip is untrusted: member names may try to escape the destination (`../`, absolute paths,
drive letters), files may be huge, and content may be anything. Only JSON, safetensors and
tokenizer text files are accepted, and the result must load through `load_model`.

Sizes are checked before anything is read: the member count from the zip's end record (before Python
lists the directory), the unpacked total and every member's expansion ratio from the directory, and
`item_ids.json` by its size and by an upper bound of its ids counted in one streamed pass, so a zip of
20 M item ids is refused in milliseconds instead of costing 3.6 GB in `load_model`. A refused import
leaves nothing on disk (its temp folder is removed on any error, a kill included: the workspace sweep
removes `uploaded-*.tmp`). The files a saved run folder holds beside its model (`per_user.npy`, the run's
per-user metrics) are left out, so a zipped run folder imports as it is.
"""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from recsys_core.data.source import zip_directory
from recsys_core.errors import ModelError, RecsysError, ResourceError
from recsys_core.models.base import Recommender, load_model

ALLOWED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".md"}
RUN_EXTRAS = {"per_user.npy"}  # what a saved run folder holds beside its model: not imported
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_MEMBERS = 256  # a model folder holds a handful of files (a tokenizer a few more)
MAX_RATIO = 100  # uncompressed / compressed size of every member
RATIO_SLACK = 64 << 10  # bytes a member may unpack to beyond the ratio (tiny files cannot compress 100x)
MAX_ITEMS = 2_000_000  # item ids a model may have (item_ids.json is read whole by `load_model`)
MAX_ITEM_IDS_BYTES = 64 << 20  # and the size of that file


def safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or a ModelError when it would land outside the destination."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelError(f"zip member {name!r} points outside the archive folder",
                        hint="this zip is unsafe; re-create it from the model folder itself")
    return path


def import_model_zip(data: bytes, models_dir: str | Path, *, filename: str = "upload.zip",
                     accept: Callable[[Recommender], object] | None = None) -> tuple[Path, Recommender]:
    """Unpack a model zip under `models_dir` and load it; nothing is left behind if it is invalid, or if
    `accept(model)` (e.g. `lambda m: m.check_fits(dataset)`) raises: a refused model is not kept."""
    listed = zip_directory(data)
    if listed is not None and (listed[0] > MAX_MEMBERS or listed[1] > MAX_MEMBERS * 1024):
        raise ResourceError(f"the zip lists {max(listed[0], listed[1] // 1024):,} members, over the limit of "
                            f"{MAX_MEMBERS} for a model folder", file=filename,
                            hint="zip only the model folder (config.json, item_ids.json, model.safetensors)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise ModelError("not a zip archive", file=filename, hint="upload a .zip of a saved model folder") from err
    members = _checked_members(archive, filename)
    root = _common_root(members)
    _check_item_ids(archive, members, root, filename)
    dest = Path(models_dir) / f"uploaded-{uuid.uuid4().hex[:8]}"
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        for info, rel in members:
            if rel.parts[:len(root.parts)] != root.parts:
                continue  # files beside the model folder are not part of it
            target = tmp / PurePosixPath(*rel.parts[len(root.parts):])
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        model = load_model(tmp)
        if accept is not None:
            accept(model)
        tmp.rename(dest)
    except RecsysError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"the uploaded model is not usable: {err.message}", file=filename, hint=err.hint) from err
    except Exception as err:  # a corrupt safetensors file raises library-specific errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"the uploaded model could not be read ({type(err).__name__}: {str(err)[:200]})",
                         file=filename, hint="upload a zip of a folder saved by RecSys Explorer") from err
    except BaseException:  # a cancel or an interrupt: still nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, model


def _checked_members(archive: zipfile.ZipFile, filename: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members, total = [], 0
    for info in archive.infolist():
        rel = safe_member_path(info.filename)
        if info.is_dir() or rel.name.startswith(".") or "__MACOSX" in rel.parts or rel.name in RUN_EXTRAS:
            continue
        if rel.suffix not in ALLOWED_SUFFIXES:
            raise ModelError(f"zip member {info.filename!r} is not a model file", file=filename,
                            hint=f"a model folder holds only {', '.join(sorted(ALLOWED_SUFFIXES))} files")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise ResourceError(f"the zip unpacks to more than {MAX_UNPACKED_BYTES / 2**30:g} GiB", file=filename,
                                hint="zip only the model folder (config.json, item_ids.json, model.safetensors)")
        if info.file_size > RATIO_SLACK + MAX_RATIO * max(1, info.compress_size):
            # Trained weights barely compress; a member this compressible is a zip bomb, not a model.
            raise ResourceError(f"zip member {info.filename!r} expands {info.file_size // max(1, info.compress_size):,}"
                                f" times (over {MAX_RATIO})", file=filename,
                                hint="upload a zip made from a saved model folder")
        members.append((info, rel))
    if not any(rel.name == "config.json" for _, rel in members):
        raise ModelError("the zip holds no config.json", file=filename,
                        hint="zip the model folder that contains config.json and model.safetensors")
    return members


def _check_item_ids(archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                    root: PurePosixPath, filename: str) -> None:
    """Refuse an item_ids.json too big to read: by its size, then by an upper bound of its ids (a flat JSON
    list has at most max(quotes / 2, commas + 1) entries) counted in 1 MB pieces, before `load_model` reads it."""
    info = next((i for i, rel in members if rel == root / "item_ids.json"), None)
    if info is None:
        return  # `load_model` says it is missing
    hint = (f"a model may have at most {MAX_ITEMS:,} items ({MAX_ITEM_IDS_BYTES >> 20} MB of item_ids.json); "
            "train it on fewer items (drop rare ones)")
    if info.file_size > MAX_ITEM_IDS_BYTES:
        raise ResourceError(f"item_ids.json is {info.file_size / 2**20:,.0f} MB, over the "
                            f"{MAX_ITEM_IDS_BYTES >> 20} MB limit", file=filename, hint=hint)
    quotes = commas = 0
    with archive.open(info) as fh:
        while piece := fh.read(1 << 20):
            quotes, commas = quotes + piece.count(b'"'), commas + piece.count(b",")
    ids = max(quotes // 2, commas + 1)
    if ids > MAX_ITEMS:
        raise ResourceError(f"item_ids.json lists about {ids:,} items, over the limit of {MAX_ITEMS:,}",
                            file=filename, hint=hint)


def _common_root(members: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> PurePosixPath:
    """The folder holding config.json at the shallowest level (zips often wrap a folder)."""
    configs = sorted((rel for _, rel in members if rel.name == "config.json"), key=lambda p: len(p.parts))
    return configs[0].parent
