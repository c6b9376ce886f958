"""The server compiles UMAP in the background at start-up, so a visitor's first map does not wait for it;
warm-ups can be turned off."""

from __future__ import annotations

import pytest

from recsys_core.insight import project
from views.ui import warmup


def test_umap_is_compiled_by_the_servers_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(warmup.WARMUP_ENV, "1")
    monkeypatch.setattr(warmup, "_started", {})
    monkeypatch.setattr(warmup, "WARM_TASKS", {"umap": warmup.WARM_TASKS["umap"]})
    threads = warmup.start_warmups()
    assert threads["umap"].daemon  # never holds the server up at exit
    threads["umap"].join(300)
    assert not threads["umap"].is_alive()
    assert project._UMAP_WARM.is_set()  # the Embeddings page no longer announces "compiling, allow ~30 s"


def test_warm_ups_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(warmup.WARMUP_ENV, "0")
    monkeypatch.setattr(warmup, "_started", {})
    assert warmup.start_warmups() == {}
