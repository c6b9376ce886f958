"""What a visitor reads of the server's folders (`recsys_core.workspace.visible`): one rule for a path, one for a
message, and the pages' error box shows a message exactly as the engine's rule writes it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from recsys_core.errors import DataError
from recsys_core.workspace.registry import ALLOWED_ENV, Workspace
from recsys_core.workspace.visible import visible_path, visible_text

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _message(ws_root: Path, shared: Path) -> str:
    return (f"cannot read {ws_root}/models/run-00001-ease/config.json; {shared}/m1 is empty; "
            f"{sys.prefix}/lib/site.py failed")


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(workspace folder, an operator's allowed folder named shared-models)."""
    shared = tmp_path / "shared-models"
    shared.mkdir()
    monkeypatch.setenv(ALLOWED_ENV, str(shared))
    return (tmp_path / "ws").resolve(), shared.resolve()


def test_a_message_names_each_server_folder_as_a_visitor_knows_it(folders: tuple[Path, Path]) -> None:
    root, shared = folders
    shown = visible_text(root, _message(root, shared))
    assert shown == ("cannot read workspace/models/run-00001-ease/config.json; shared-models/m1 is empty; "
                     "<python>/lib/site.py failed")
    ws = Workspace(root)  # a path in a message reads as the path rule names it (the workspace by its name)
    assert f"workspace/{visible_path(ws, root / 'models' / 'run-00001-ease')}/" in shown
    assert f"{visible_path(ws, shared / 'm1')} is empty" in shown
    app = Path.cwd()  # the default workspace lies inside the app's folder: each keeps its own rule
    assert visible_text(app / "workspace", f"{app}/workspace/models/x, {app}/app.py") == "workspace/models/x, ./app.py"


def test_the_pages_error_box_shows_a_message_as_the_engines_rule_writes_it(
        folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from views.ui import common

    root, shared = folders
    message, hint = _message(root, shared), f"put the files back in {root}/datasets/mine"

    def broken(record):
        raise DataError(message, hint=hint)

    monkeypatch.setenv("RECSYS_WORKSPACE", str(root))
    monkeypatch.setattr(common, "dataset_stats", broken)  # the Home page's first engine call fails
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    shown = at.error[0].value.replace("\\", "")  # the box escapes Markdown; the words are the engine's
    assert visible_text(root, message) in shown and visible_text(root, hint) in shown
    assert str(root) not in shown and str(shared) not in shown and sys.prefix not in shown
