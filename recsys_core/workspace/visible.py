"""What a visitor sees of the server's folders: paths relative to the workspace, never absolute ones.

Messages and errors reach browser visitors and API clients. They name paths relative to the workspace
(`models/run-00001-ease`, as the forms take them); where the workspace lies on the server
(`/srv/recsys/workspace`), or an operator's allowed folder, is none of their business. (Errors name a
model's files by their folder, `models.base.shown_path`; the pages' error box hides any other server folder.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recsys_core.workspace.registry import allowed_roots


def visible_path(workspace: Any, path: str | os.PathLike) -> str:
    """`path` as a visitor may read it: relative to the workspace (`models/abc`); inside an operator's allowed
    folder, from that folder's own name (`shared-models/abc`); anywhere else, its last part only."""
    p = Path(path)
    resolved = (p if p.is_absolute() else workspace.root / p).resolve()
    for root, label in _roots(workspace):
        if resolved.is_relative_to(root):
            rel = resolved.relative_to(root).as_posix()
            return "/".join(part for part in (label, "" if rel == "." else rel) if part) or "."
    return p.name


def _roots(workspace: Any) -> list[tuple[Path, str]]:
    """(folder, how a visitor sees it), longest first so a folder inside another is rewritten by its own rule."""
    roots = [(Path(workspace.root).resolve(), ""), *((root, root.name) for root in allowed_roots())]
    return sorted(roots, key=lambda r: -len(str(r[0])))
