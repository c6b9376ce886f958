"""The engine's one cache helper: keyed, bounded, thread-safe.

Several browser sessions and background jobs share one server process, so a cache of explanations,
projections or blurbs is read and written from many threads at once. Keys name what a value depends
on (a model's `identity`, a dataset's version, the inputs), never `id(obj)`: Python reuses the id of
a collected object, so an id key can hand one model's result to another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class KeyedCache(Generic[V]):
    """Least-recently-used mapping of at most `max_entries` values; every method is thread-safe."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
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
        """The cached value, or `compute()` stored under `key`. Computing runs outside the lock, so a
        slow value never blocks other keys; two threads may both compute a missing key (same result)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        value = compute()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
