"""What a visitor sees of the server's folders: the one place that decides it, for paths and for messages.

Messages and errors reach browser visitors and API clients. They name paths relative to the workspace
(`models/run-00001-ease`, as the forms take them); where the workspace lies on the server
(`/srv/recsys/workspace`), or an operator's allowed folder, is none of their business. Two rules, one table
of folders: `visible_path` turns one path into its visible form; `visible_text` turns a message into the same
message with every server folder in it named as a visitor knows it (the pages' error box shows messages through
it). Errors name a model's files by their folder (`models.base.shown_path`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from recsys_core.workspace.registry import allowed_roots

WORKSPACE_NAME = "workspace"  # how a message names the workspace folder ("workspace/models/abc")


def visible_path(workspace: Any, path: str | os.PathLike) -> str:
    """`path` as a visitor may read it: relative to the workspace (`models/abc`); inside an operator's allowed
    folder, from that folder's own name (`shared-models/abc`); anywhere else, its last part only."""
    p = Path(path)
    resolved = (p if p.is_absolute() else workspace.root / p).resolve()
    for root, label in _longest_first([(Path(workspace.root).resolve(), ""), *_allowed()]):
        if resolved.is_relative_to(root):
            rel = resolved.relative_to(root).as_posix()
            return "/".join(part for part in (label, "" if rel == "." else rel) if part) or "."
    return p.name


def visible_text(workspace_root: str | os.PathLike, text: str) -> str:
    """`text` with every server folder in it named as a visitor knows it: the workspace as `workspace`, an
    operator's allowed folder by its own name (as `visible_path` names it), the app's folder as `.`, Python's as
    `<python>` and the home folder as `~`. Nested folders get their own rule (the longest one matches first)."""
    folders = [(Path(workspace_root), WORKSPACE_NAME), *_allowed(), (Path.cwd(), "."), (Path(sys.prefix), "<python>"),
               (Path.home(), "~")]
    spelled = [(form, name) for folder, name in folders for form in _spellings(folder)]
    for form, name in _longest_first(spelled):
        text = text.replace(form, name)
    return text


def _allowed() -> list[tuple[Path, str]]:
    """The operator's allowed folders, each named by its own last part."""
    return [(root, root.name) for root in allowed_roots()]


def _spellings(folder: Path) -> set[str]:
    """How a message may spell `folder`: as given (made absolute) and resolved (a symlinked /tmp); never "/"."""
    forms = {str(folder.absolute()), str(folder.resolve())}
    return {form for form in forms if len(form) > 1}


def _longest_first(pairs: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """(folder, how a visitor sees it), longest first so a folder inside another is rewritten by its own rule."""
    return sorted(pairs, key=lambda pair: -len(str(pair[0])))
