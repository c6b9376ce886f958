"""The one door to the Hugging Face hub: a model named in a form, a `--set` or a Blurbs field that is not a
folder on this machine is a hub name, and a hub name is used only when the operator started the server with
`RECSYS_ALLOW_HUB_MODELS=1` (and not `HF_HUB_OFFLINE=1`). Every caller that could hand a name to
transformers or sentence-transformers asks `require_hub_access` first: the text tower's and the hybrid's
`model_name` (`text_tower.load_encoder`) and the Blurbs language models (`recsys_core.blurbs.hub`).
The check reads only the environment, so a refused name never reaches the network."""

from __future__ import annotations

import os
import re
from pathlib import Path

from recsys_core.errors import ConfigError

ENV_ALLOW_HUB = "RECSYS_ALLOW_HUB_MODELS"
TRUE_WORDS = ("1", "true", "yes", "on")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def hub_downloads_allowed() -> bool:
    """Whether hub names may be used: only when the operator says so (`RECSYS_ALLOW_HUB_MODELS=1`) and has not
    put the machine offline (`HF_HUB_OFFLINE=1`), whatever a visitor types."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS
    return not offline and os.environ.get(ENV_ALLOW_HUB, "").strip().lower() in TRUE_WORDS


def is_hub_name(source: str) -> bool:
    """True for `org/name` that is a Hugging Face hub id and not a folder on this machine."""
    return bool(_HUB_NAME.fullmatch(source)) and ".." not in source and not Path(source).expanduser().exists()


def require_hub_access(name: str, what: str = "model", setting: str | None = None) -> None:
    """Raise `ConfigError` unless `name` is a hub id (`org/name`) and the operator allows the hub. Called
    before anything loads `name`: a refusal makes no connection."""
    if not is_hub_name(name):
        raise ConfigError(f"the {what} {name!r} is neither a folder on this server nor a Hugging Face hub name "
                          "(org/name)", setting=setting,
                          hint="give a model folder inside the workspace, or leave it empty for the bundled model")
    if not hub_downloads_allowed():
        raise ConfigError(
            f"the {what} {name!r} is not a folder on this server, and downloading models from the Hugging Face hub "
            "is off", setting=setting,
            hint="give a model folder inside the workspace (e.g. llm/my-model for a language model), or ask the "
                 f"operator to place the model there, or to start the server with {ENV_ALLOW_HUB}=1 (and without "
                 "HF_HUB_OFFLINE=1) to allow the hub")
