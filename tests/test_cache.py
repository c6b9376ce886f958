"""The one cache helper, and the model identity every shared cache is keyed on."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from recsys_core.cache import KeyedCache
from recsys_core.data.demo import load_demo
from recsys_core.models.base import load_model
from recsys_core.models.popularity import Popularity

V0 = Path(__file__).parent / "fixtures" / "artifacts-v0"


def test_least_recently_used_entry_goes_first() -> None:
    cache: KeyedCache[int] = KeyedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def test_many_threads_share_one_cache_without_losing_its_bound() -> None:
    cache: KeyedCache[int] = KeyedCache(50)
    calls = []

    def work(offset: int) -> None:
        for i in range(2000):
            key = (offset + i) % 80
            assert cache.get_or_compute(key, lambda k=key: calls.append(k) or k * 2) == key * 2

    threads = [threading.Thread(target=work, args=(t * 7,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and len(calls) >= 80


def test_identity_follows_the_weights_not_the_python_object(tmp_path: Path) -> None:
    first, second = load_model(V0 / "ease"), load_model(V0 / "ease")
    assert first is not second and first.identity == second.identity  # one folder: sessions share results
    shutil.copytree(V0 / "popularity", tmp_path / "pop")
    assert load_model(tmp_path / "pop").identity == load_model(V0 / "popularity").identity
    model = Popularity()
    ds = load_demo()
    before = model.fit(ds).identity
    assert model.fit(ds).identity != before  # a refit is new weights, even in the same object
