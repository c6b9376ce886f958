"""The engine's one cache helper: keyed, bounded, thread-safe, each key computed once.

Several browser sessions and background jobs share one server process, so a cache of explanations,
projections, blurbs or loaded language models is read and written from many threads at once. Keys
name what a value depends on (a model's `identity`, a dataset's version, the inputs), never `id(obj)`:
Python reuses the id of a collected object, so an id key can hand one model's result to another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Pending:
    """The lock of one key being computed, and how many threads hold or wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class KeyedCache(Generic[V]):
    """Least-recently-used mapping of at most `max_entries` values; every method is thread-safe."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()  # guards `_data` and `_pending`; never held while computing

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            return self._hit(key)

    def _hit(self, key: Hashable) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value, or `compute()` stored under `key`, computed once however many threads ask.

        A second thread asking for a key being computed waits and gets the first one's value; other keys
        compute in parallel. When `compute` raises, the key is released and the next caller computes again.
        """
        with self._lock:
            hit = self._hit(key)
            if hit is not None:
                return hit
            pending = self._pending.setdefault(key, _Pending())
            pending.users += 1
        try:
            with pending.lock:
                hit = self.get(key)  # computed by the thread we waited for
                if hit is not None:
                    return hit
                value = compute()
                self.put(key, value)
                return value
        finally:
            with self._lock:
                pending.users -= 1
                if not pending.users:
                    del self._pending[key]

    def pop(self, key: Hashable) -> V | None:
        """Drop `key`; its value, or None when it was not cached."""
        with self._lock:
            return self._data.pop(key, None)

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._data)

    def __contains__(self, key: Hashable) -> bool:
        """Whether `key` is cached, without counting as a use."""
        with self._lock:
            return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
