"""Where a language model may come from: the bundled SmolLM2 (`local.local_default_backend`), a folder inside
the workspace's `llm/` folder, or a Hugging Face hub name when the operator allows the hub
(`recsys_core.models.hub.require_hub_access`, the one check the text tower's `model_name` uses too).

`llm_source` turns what a visitor typed into one of those, or an `LLMError`: `llm/my-model` and `my-model` are
always folders of `<workspace>/llm/` (never a hub name, even if it does not exist), a path that leaves that
folder (`..`, an absolute path elsewhere, a symlink out) is refused, and errors name the folder relative to
`llm/`, never the server's absolute paths."""

from __future__ import annotations

from pathlib import Path

from recsys_core.errors import ConfigError, LLMError
from recsys_core.models.hub import ENV_ALLOW_HUB, hub_downloads_allowed, is_hub_name, require_hub_access

__all__ = ["ENV_ALLOW_HUB", "LLM_DIR", "check_hub_source", "hub_downloads_allowed", "is_hub_name", "llm_source"]

LLM_DIR = "llm"  # the workspace folder that holds language model folders (and the bundled model's converted copy)
_FOLDER_HINT = ("copy the model folder (config.json, the weights and the tokenizer files) into the workspace's "
                "llm/ folder and give its name (e.g. llm/my-model), or pick the bundled model")


def check_hub_source(name: str) -> None:
    """`require_hub_access` for a language model, as an `LLMError` (a blurb falls back to the template)."""
    try:
        require_hub_access(name, "language model")
    except ConfigError as err:
        raise LLMError(err.message, hint=err.hint) from err


def llm_source(text: str, llm_root: Path) -> str:
    """The folder (resolved, inside `llm_root`) or the allowed hub name that `text` names; raises `LLMError`."""
    text = text.strip()
    if not text or "\x00" in text:
        raise LLMError("no language model folder given", hint=_FOLDER_HINT)
    as_folder = text.startswith((f"{LLM_DIR}/", "/", ".", "~", "\\")) or "/" not in text
    if not as_folder and not (llm_root / text).is_dir():
        check_hub_source(text)  # `org/name`: the hub, only where the operator allows it
        return text
    relative = text[len(LLM_DIR) + 1:] if text.startswith(f"{LLM_DIR}/") else text
    root = llm_root.resolve()
    folder = (root / Path(relative).expanduser()).resolve()  # an absolute `relative` replaces the root: checked below
    if not folder.is_relative_to(root):
        raise LLMError(f"that language model folder is outside the workspace's {LLM_DIR}/ folder (a path that "
                       f"leaves {LLM_DIR}/ through '..', '~', a link or an absolute path)", hint=_FOLDER_HINT)
    shown = folder.relative_to(root).as_posix()
    if not folder.is_dir():
        raise LLMError(f"no such folder in the workspace {LLM_DIR}/: {shown!r}", hint=_FOLDER_HINT)
    if not (folder / "config.json").is_file():
        raise LLMError(f"the folder {LLM_DIR}/{shown} holds no config.json: it is not a language model folder",
                       hint=_FOLDER_HINT)
    return str(folder)
