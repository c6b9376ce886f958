"""The one cache helper (bounded, each key computed once however many threads ask), and the model identity
every shared cache is keyed on."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

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


def _run_all(targets: list) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


def test_threads_asking_for_one_missing_key_compute_it_once_and_share_the_value() -> None:
    cache: KeyedCache[object] = KeyedCache(4)
    computed, results = [], []
    start = threading.Barrier(8)

    def slow() -> object:
        computed.append(1)
        time.sleep(0.3)  # long enough for every other thread to arrive while it runs
        return object()

    def ask() -> None:
        start.wait()
        results.append(cache.get_or_compute("model", slow))

    _run_all([ask] * 8)
    assert len(computed) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_different_keys_still_compute_at_the_same_time() -> None:
    """Key a's compute waits for key b's compute to start: with one lock for all keys it would time out."""
    cache: KeyedCache[bool] = KeyedCache(4)
    b_started, a_running, results = threading.Event(), threading.Event(), {}

    def compute_a() -> bool:
        a_running.set()
        return b_started.wait(10)

    def compute_b() -> bool:
        b_started.set()
        return True

    def ask_b() -> None:
        a_running.wait(10)
        results["b"] = cache.get_or_compute("b", compute_b)

    _run_all([lambda: results.setdefault("a", cache.get_or_compute("a", compute_a)), ask_b])
    assert results == {"a": True, "b": True}


def test_a_failed_compute_releases_the_key_and_a_waiting_thread_computes_it_again() -> None:
    cache: KeyedCache[str] = KeyedCache(4)
    first_running, let_fail = threading.Event(), threading.Event()
    outcome = {}

    def failing() -> str:
        first_running.set()
        let_fail.wait(10)
        raise RuntimeError("load failed")

    def first() -> None:
        with pytest.raises(RuntimeError, match="load failed"):
            cache.get_or_compute("k", failing)

    def second() -> None:
        first_running.wait(10)
        outcome["value"] = cache.get_or_compute("k", lambda: "second try")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_running.wait(10)
    time.sleep(0.1)  # the second thread now waits on the key
    let_fail.set()
    for t in threads:
        t.join(30)
    assert outcome == {"value": "second try"} and cache.get("k") == "second try"
    assert cache.get_or_compute("k", lambda: "never") == "second try"
    assert cache._pending == {}  # no key lock is left behind


def test_pop_keys_and_contains_do_not_count_as_a_use() -> None:
    cache: KeyedCache[int] = KeyedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert "a" in cache and cache.keys() == ["a", "b"]  # a membership test left "a" the oldest
    cache.put("c", 3)
    assert "a" not in cache and cache.pop("b") == 2 and cache.pop("b") is None and cache.keys() == ["c"]


def test_identity_follows_the_weights_not_the_python_object(tmp_path: Path) -> None:
    first, second = load_model(V0 / "ease"), load_model(V0 / "ease")
    assert first is not second and first.identity == second.identity  # one folder: sessions share results
    shutil.copytree(V0 / "popularity", tmp_path / "pop")
    assert load_model(tmp_path / "pop").identity == load_model(V0 / "popularity").identity
    model = Popularity()
    ds = load_demo()
    before = model.fit(ds).identity
    assert model.fit(ds).identity != before  # a refit is new weights, even in the same object
