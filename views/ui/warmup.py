"""Work the server does once per process, in the background, so a visitor's first click does not pay it.

`start_warmups()` runs every task of `WARM_TASKS` in a daemon thread of its own, once per process
(later calls return at once: `app.py` calls it on every rerun of every session). Each task must be cheap
to call twice and safe beside a page that needs the same object: the objects it warms are the shared,
locked ones pages use (e.g. `recsys_core.blurbs.loading.load_lm`), so a page that arrives first just waits
for the same load instead of starting another.

`RECSYS_WARMUP=0` turns every warm-up off (a CI run of page tests that never use them; a server that
must start with the least memory).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

WARMUP_ENV = "RECSYS_WARMUP"
_started: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def _local_llm() -> None:
    """Load the bundled SmolLM2 (from the workspace's converted copy; converting the GGUF into it the
    first time) and write one token, so the Blurbs page's first blurb pays neither."""
    from recsys_core.blurbs.local import local_default_backend
    from recsys_core.errors import LLMError
    from views.ui.common import workspace

    try:
        backend = local_default_backend(workspace().root / "llm")
    except LLMError:
        return  # the package is missing: the Blurbs page says so and offers the template
    thread = backend.start_loading()
    if thread is not None:
        thread.join()


def _umap() -> None:
    """Compile UMAP's numba kernels on a tiny map, so a visitor's first UMAP does not pay it: about 30 s on a
    busy 2-core box. (Explanations need no warm-up: their permutation sampler is plain NumPy.)"""
    import numpy as np

    from recsys_core.insight.project import project

    points = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    project(points, method="umap", dims=2, n_neighbors=5, n_epochs=20, use_cache=False)


WARM_TASKS: dict[str, Callable[[], None]] = {
    "local-llm": _local_llm,
    "umap": _umap,
}


def warmups_enabled() -> bool:
    return os.environ.get(WARMUP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _imports() -> None:
    """What the tasks import, imported here in the caller's thread first: transformers resolves names lazily
    and is not safe to import from two threads at once (a page thread importing the models beside the LLM
    warm-up failed with "cannot import name 'BertConfig'"). Every page imports the models anyway."""
    import recsys_core.models  # noqa: F401  (the pages' own transformers imports)
    from recsys_core.blurbs.loading import import_transformers

    import_transformers()


def start_warmups() -> dict[str, threading.Thread]:
    """Start each warm-up task once per process, each in a daemon thread; returns the threads started so far."""
    if not warmups_enabled():
        return {}
    with _lock:
        if not _started:
            _imports()
        for name, task in WARM_TASKS.items():
            if name not in _started:
                _started[name] = threading.Thread(target=task, name=f"warmup-{name}", daemon=True)
                _started[name].start()
        return dict(_started)
