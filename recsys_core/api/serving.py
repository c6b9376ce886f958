"""What `recsys serve` holds and how it answers: the served model and dataset, swapped atomically when the active
run changes, and concurrent recommendation requests coalesced into one forward pass.

No web framework here: the FastAPI app (`api/app.py`) is a thin client of these objects and of the engine's use
cases, as the pages and the CLI are.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from recsys_core.api.settings import ServeSettings
from recsys_core.data.dataset import Dataset
from recsys_core.data.demo import DEMO_NAME
from recsys_core.data.resolve import resolve_dataset
from recsys_core.errors import ModelError, RecsysError
from recsys_core.models.base import Recommender, load_model
from recsys_core.recommend.catalogue import best_run, catalogue_of
from recsys_core.recommend.usecases import Limits, Query, Recommendations, recommend_batch
from recsys_core.workspace.registry import Workspace


@dataclass(frozen=True, eq=False)
class Served:
    """One loaded model with the dataset it serves: requests take a reference once and keep it to the end."""

    model: Recommender
    ds: Dataset
    folder: str
    run_id: int | None
    dataset_version: str
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict:
        return {"model": self.model.family, "model_version": self.model.identity, "run": self.run_id,
                "dataset": self.ds.name, "n_items": self.ds.n_items, "n_users": self.ds.n_users,
                "loaded_at": self.loaded_at}


def _dataset_name(settings: ServeSettings) -> str:
    return DEMO_NAME if settings.dataset in ("demo", DEMO_NAME) else settings.dataset


def _dataset_version(ws: Workspace, settings: ServeSettings) -> str:
    """The served dataset's version: its saved folder (a re-saved dataset gets a new one), or the file it names."""
    record = ws.get_dataset(_dataset_name(settings))
    return f"file:{settings.dataset}" if record is None else str(record.path)


def _read_dataset(ws: Workspace, settings: ServeSettings) -> Dataset:
    name = _dataset_name(settings)
    if ws.get_dataset(name) is None:  # a file or folder the operator named
        return resolve_dataset(settings.dataset, ws)
    return ws.load_dataset(name)


class ModelHolder:
    """The served model, and a poller that loads a changed active run beside it and swaps the reference.

    The active run is the dataset's best finished run (`recommend.catalogue.best_run`); `--model-dir` pins one
    folder instead. A request reads `served` once, so it finishes on the model it started with; the old model is
    freed when its last request lets go of it.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.ws = Workspace(settings.workspace)
        self.swaps = 0
        self.last_error = ""
        self._rejected: set[str] = set()  # folders that do not load or do not fit: not retried
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if _dataset_name(settings) == DEMO_NAME:
            self.ws.ensure_demo()
        self.served = self._load(None)

    def _load(self, current: Served | None) -> Served:
        version = _dataset_version(self.ws, self.settings)  # one query per poll: the data is read when it changed
        same = current is not None and current.dataset_version == version
        ds = current.ds if same else _read_dataset(self.ws, self.settings)
        if self.settings.model_dir:
            model = load_model(self.settings.model_dir)
            model.check_fits(ds)
            return Served(model, ds, str(self.settings.model_dir), None, version)
        loaded: dict[str, Recommender] = {}

        def fits(folder: Path) -> bool:
            key = str(folder)
            if current is not None and key == current.folder and current.model.fits(ds):
                loaded[key] = current.model
                return True
            if key in self._rejected:
                return False
            try:
                loaded[key] = load_model(folder)
            except RecsysError as err:
                self.last_error = str(err)
                self._rejected.add(key)
                return False
            if not loaded[key].fits(ds):
                self._rejected.add(key)
                return False
            return True

        run = best_run(self.ws, _dataset_name(self.settings), fits=fits)
        if run is None:
            raise ModelError(f"no finished run with saved files fits dataset {ds.name!r}",
                             hint=f"train one first: recsys train --dataset {self.settings.dataset} --model ease "
                                  "(or serve a folder with --model-dir)")
        folder = str(run.artifact_dir)
        if current is not None and folder == current.folder and ds is current.ds:
            return current
        catalogue_of(ds)  # built before the swap, so the first request after it pays nothing
        return Served(loaded[folder], ds, folder, run.id, version)

    def refresh(self) -> bool:
        """Check the active run once; load and swap when it changed. True when a swap happened."""
        current = self.served
        try:
            new = self._load(current)
        except RecsysError as err:  # keep serving the model we have; /readyz and the log say why
            self.last_error = str(err)
            return False
        if new is current:
            return False
        self.served = new  # one reference assignment: a request sees the old model or the new, never a mix
        self.swaps += 1
        return True

    def start_polling(self) -> None:
        if self.settings.poll_s <= 0 or self.settings.model_dir or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="recsys-serve-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class _Waiting:
    served: Served
    query: Query
    future: asyncio.Future


class Coalescer:
    """Concurrent recommendation requests scored together: the first request of a batch waits at most
    `wait_ms` for others (up to `max_batch`; 0: greedy, those that arrived while the last batch was scored), then
    one `recommend_batch` call answers them all. A sequential model's batch of several goes to the model thread (its
    forward pass frees the GIL, so the loop parses the next requests meanwhile); a lone request, any other model's
    batch and a request with batching off are scored on the loop: the hop to another thread cost a lone SASRec+
    request more than it saved (demo, 400 requests/s: p99 19 ms through the thread, 5.5 ms on the loop), and more
    than EASE's whole top-10."""

    def __init__(self, limits: Limits, max_batch: int, wait_ms: float, mode: str) -> None:
        self.limits, self.max_batch, self.wait_s, self.mode = limits, max_batch, wait_ms / 1000.0, mode
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-model")
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, read (and cleared) by the metrics

    def batches(self, served: Served) -> bool:
        """Whether requests to this model are coalesced: `on`, or `auto` for a sequential (order-aware) model, whose
        forward pass costs most and batches best (asked per model: a swap may change the family)."""
        return self.mode == "on" or (self.mode == "auto" and served.model.capabilities.order_aware)

    async def recommend(self, served: Served, query: Query) -> Recommendations:
        if not self.batches(served):
            return self._one(served, query)
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        waiting = _Waiting(served, query, loop.create_future())
        self._queue.put_nowait(waiting)
        return await waiting.future

    def _one(self, served: Served, query: Query) -> Recommendations:
        self.batch_sizes.append(1)
        return recommend_batch(served.model, served.ds, [query], self.limits)[0]

    async def run_on_model_thread(self, fn, *args):
        """Other model work (explanations, similar items) on the same thread as scoring."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            for group in _by_model(batch):
                await self._answer(loop, group)

    async def _answer(self, loop, group: list[_Waiting]) -> None:
        self.batch_sizes.append(len(group))
        served = group[0].served
        queries = [w.query for w in group]
        try:
            if served.model.capabilities.order_aware and len(group) > 1:  # the loop parses while torch runs
                results = await loop.run_in_executor(self.executor, recommend_batch, served.model, served.ds, queries,
                                                     self.limits)
            else:  # one request, or a sparse product: cheaper than the hop to another thread (the rest wait in the socket)
                results = recommend_batch(served.model, served.ds, queries, self.limits)
        except Exception as err:  # noqa: BLE001  each request gets the error (a RecsysError becomes its 4xx)
            for w in group:
                if not w.future.done():
                    w.future.set_exception(err)
            return
        for w, result in zip(group, results, strict=True):
            if not w.future.done():  # a client that went away cancelled its future
                w.future.set_result(result)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _by_model(batch: list[_Waiting]) -> list[list[_Waiting]]:
    """Requests grouped by the model they started on (a swap may fall inside a batch)."""
    groups: dict[int, list[_Waiting]] = {}
    for w in batch:
        groups.setdefault(id(w.served), []).append(w)
    return list(groups.values())
