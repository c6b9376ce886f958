"""Importing a saved model folder that a user uploads as a zip, validated before anything is used.

A zip is untrusted: member names may try to escape the destination (`../`, absolute paths,
drive letters), files may be huge, and content may be anything. Only JSON, safetensors and
tokenizer text files are accepted, and the result must load through `load_model`.
"""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from recsys_core.errors import ModelError, RecsysError, ResourceError
from recsys_core.models.base import Recommender, load_model

ALLOWED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".md"}
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_RATIO = 100  # uncompressed / compressed size of one member above 1 MB


def safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or a ModelError when it would land outside the destination."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelError(f"zip member {name!r} points outside the archive folder",
                        hint="this zip is unsafe; re-create it from the model folder itself")
    return path


def import_model_zip(data: bytes, models_dir: str | Path, *, filename: str = "upload.zip") -> tuple[Path, Recommender]:
    """Unpack a model zip under `models_dir` and load it; nothing is left behind if it is invalid."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ModelError("not a zip archive", file=filename, hint="upload a .zip of a saved model folder") from err
    members = _checked_members(archive, filename)
    root = _common_root(members)
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
        tmp.rename(dest)
    except RecsysError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"the uploaded model is not usable: {err.message}", file=filename, hint=err.hint) from err
    except Exception as err:  # a corrupt safetensors file raises library-specific errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"the uploaded model could not be read ({type(err).__name__}: {err})", file=filename,
                        hint="upload a zip of a folder saved by RecSys Explorer") from err
    return dest, model


def _checked_members(archive: zipfile.ZipFile, filename: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members, total = [], 0
    for info in archive.infolist():
        rel = safe_member_path(info.filename)
        if info.is_dir() or rel.name.startswith(".") or "__MACOSX" in rel.parts:
            continue
        if rel.suffix not in ALLOWED_SUFFIXES:
            raise ModelError(f"zip member {info.filename!r} is not a model file", file=filename,
                            hint=f"a model folder holds only {', '.join(sorted(ALLOWED_SUFFIXES))} files")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise ResourceError("the zip unpacks to more than 2 GiB", file=filename)
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(1, info.compress_size):
            # Trained weights barely compress; a member this compressible is a zip bomb, not a model.
            raise ResourceError(f"zip member {info.filename!r} expands {info.file_size // max(1, info.compress_size):,}"
                                f" times (over {MAX_RATIO})", file=filename,
                                hint="upload a zip made from a saved model folder")
        members.append((info, rel))
    if not any(rel.name == "config.json" for _, rel in members):
        raise ModelError("the zip holds no config.json", file=filename,
                        hint="zip the model folder that contains config.json and model.safetensors")
    return members


def _common_root(members: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> PurePosixPath:
    """The folder holding config.json at the shallowest level (zips often wrap a folder)."""
    configs = sorted((rel for _, rel in members if rel.name == "config.json"), key=lambda p: len(p.parts))
    return configs[0].parent
