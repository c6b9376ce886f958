"""The one face of a text generator, for the blurb writer and the Blurbs page.

Every backend (`local.TransformersBackend`: a model in this process; `remote.OpenAIBackend`: a chat
server; a test's fake) subclasses `Backend` and answers every member, so a caller never asks which kind
it holds. The defaults describe a backend with nothing to load (a server, a fake): always "ready".
Every failure is an `LLMError` (`recsys_core.errors`) with what to do next; callers fall back to a template.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from recsys_core.blurbs.constrain import Guide
from recsys_core.errors import LLMError

__all__ = ["Backend", "GenerationStats", "LLMError", "LoadStatus", "Message"]

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class GenerationStats:
    """Filled while a generation runs: generated tokens, time to the first chunk and in all."""

    tokens: int = 0
    first_chunk_s: float | None = None
    total_s: float = 0.0


@dataclass
class LoadStatus:
    """How far loading a model has got, for a page to show while it waits."""

    state: str = "idle"  # "idle" | "loading" | "loaded" | "failed" | "ready" (nothing to load: a server)
    started: float = 0.0  # time.monotonic() when loading began
    converting: bool = False  # loading means dequantising a GGUF (slow, once per workspace), not reading a copy
    error: str = ""

    @property
    def waited_s(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0


class Backend(ABC):
    """Anything that turns chat messages into streamed text."""

    supports_guide: bool = False  # whether `generate` honours a `constrain.Guide` (prefix + vocabulary)

    def __init__(self, id: str, label: str) -> None:
        self.id = id  # names the backend in cache keys and results
        self.label = label  # names it to people
        self.last_stats = GenerationStats()  # of the latest `generate`

    @abstractmethod
    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Generator[str, None, None]:
        """Text chunks of the reply after `guide.prefix` (one chunk when `stream` is False), counted in
        `last_stats`; closing the generator stops the generation. Raises `LLMError`."""

    def status(self) -> LoadStatus:
        """Idle, loading (since when, converting or not), loaded, failed (why), or ready (nothing to load)."""
        return LoadStatus("ready")

    def is_loaded(self) -> bool:
        """Whether `generate` can start at once, without loading a model first."""
        return True

    def load(self) -> object:
        """Load now, or wait for the load under way (raises `LLMError`); what was loaded, if anything."""
        return None

    def warm(self) -> None:
        """Load and pay the first generation's one-off costs, so a visitor's first blurb does not."""

    def start_loading(self, warm: bool = True) -> threading.Thread | None:
        """`warm()` (or `load()`) in a daemon thread unless loaded or loading; the thread, if one started.
        A failure lands in `status()`."""
        return None
