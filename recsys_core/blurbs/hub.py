"""Where a language model may come from: a folder on this machine, or a Hugging Face hub name that is
already in the local cache. A name typed in a form never downloads unless the operator sets
`RECSYS_ALLOW_HUB_MODELS=1` (and not `HF_HUB_OFFLINE=1`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from recsys_core.errors import LLMError

ENV_ALLOW_HUB = "RECSYS_ALLOW_HUB_MODELS"
TRUE_WORDS = ("1", "true", "yes", "on")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def hub_downloads_allowed() -> bool:
    """Whether a hub name may be downloaded: only when the operator says so (`RECSYS_ALLOW_HUB_MODELS=1`)
    and has not put the machine offline (`HF_HUB_OFFLINE=1`), whatever a visitor types."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS
    return not offline and os.environ.get(ENV_ALLOW_HUB, "").strip().lower() in TRUE_WORDS


def hub_model_cached(name: str) -> bool:
    """Whether the hub model `name` is already in this machine's Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


def is_hub_name(source: str) -> bool:
    """True for `org/name` that is a Hugging Face hub id and not a folder on this machine: the only
    sources a form may pass unchecked (folders go through the workspace jail)."""
    return bool(_HUB_NAME.fullmatch(source)) and ".." not in source and not Path(source).expanduser().exists()


def check_hub_source(source: str) -> None:
    """Raise `LLMError` when loading hub name `source` would need a download the operator has not allowed."""
    if is_hub_name(source) and not hub_downloads_allowed() and not hub_model_cached(source):
        raise LLMError(
            f"{source!r} is not on this server, and downloading models from the Hugging Face hub is off",
            hint="give a model folder inside the workspace (e.g. llm/my-model), or ask the operator to place the "
                 f"model there, or to start the server with {ENV_ALLOW_HUB}=1 (and without HF_HUB_OFFLINE=1) to "
                 "allow downloads")
