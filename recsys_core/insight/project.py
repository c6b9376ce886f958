"""2-D/3-D maps of a model's embedding space (PCA, UMAP, t-SNE), with how far to trust them.

A map keeps some neighbourhoods and tears others, so every `Projection` carries its
trustworthiness (sklearn's, on a sample of at most `TRUST_SAMPLE` points so it stays fast), and
nearest neighbours are always searched in the ORIGINAL space (cosine), never on the map.

Caching lives here, not in the page: an LRU keyed by a fingerprint of the vectors (a hash of
their bytes) and the parameters, so the page, the CLI and the benchmark share it, and two runs
with identical embeddings share an entry. Rows are L2-normalised first by default, so every
method sees the cosine geometry that the neighbour search uses.

UMAP has no progress callback and holds the GIL in numba code, so a projection runs on a thread of
its own (`projection_work`, as a workspace job; `ProjectionJob` for scripts); UMAP's epoch bar (tqdm)
is routed into `Progress`, and a cancel stops it at the next epoch report. scikit-learn's t-SNE
reports nothing: its job shows elapsed time only, and a cancel discards the result when the run ends
(it cannot stop early).
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from recsys_core.background import BackgroundJob
from recsys_core.cache import KeyedCache
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.progress import Progress

METHODS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
TRUST_SAMPLE = 2000  # trustworthiness is O(n²): a fixed-size sample keeps it well under a second
TRUST_NEIGHBOURS = 10
EXACT_KNN_MAX = 50_000  # up to here UMAP gets exact neighbours from one blocked matmul (no NN-descent JIT)
_BLOCK_ELEMENTS = 2**24  # similarity block of the exact kNN: 64 MB of float32
# scikit-learn's OpenMP loops (t-SNE gradient, k-means) spin-wait at barriers: with more threads than
# free cores (a shared 2-core box) a 200-point t-SNE took 26 s with 2 threads and 2 s with 1.
OMP_THREADS = 1


class ProjectionCancelled(Exception):
    """Raised inside a projection when its `Progress` was cancelled."""


@dataclass(frozen=True)
class ProjectionParams:
    """What to compute. `n_neighbors`/`min_dist`/`n_epochs` are UMAP's, `perplexity` t-SNE's."""

    method: str = "pca"
    dims: int = 2
    seed: int = 0
    normalize: bool = True  # L2-normalise rows first, so map distances follow cosine similarity
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int = 200  # UMAP's own default is 500 below 10k points; 200 keeps 10k items well under a minute
    perplexity: float = 30.0

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown projection method {self.method!r}", hint=f"choose one of {', '.join(METHODS)}")
        if self.dims not in (2, 3):
            raise ConfigError(f"a map has 2 or 3 dimensions, got dims={self.dims}")
        if self.n_neighbors < 2 or self.n_epochs < 1 or self.perplexity <= 0 or not 0 <= self.min_dist <= 1:
            raise ConfigError("projection settings out of range",
                            hint="n_neighbors >= 2, n_epochs >= 1, perplexity > 0, 0 <= min_dist <= 1")

    def key(self) -> tuple:
        """Only the settings the method uses, so e.g. a PCA is not recomputed when UMAP's epochs change."""
        base = (self.method, self.dims, self.seed, self.normalize)
        if self.method == "umap":
            return (*base, self.n_neighbors, self.min_dist, self.n_epochs)
        if self.method == "tsne":
            return (*base, self.perplexity)
        return base


@dataclass
class Projection:
    """A map: `coords` [n, dims] float32, row i for vector i."""

    coords: np.ndarray
    method: str
    params: dict
    seconds: float  # the projection itself
    trustworthiness: float  # in [0, 1]; 1 = every map neighbour is also a neighbour in the original space
    trust_sample: int  # points the trustworthiness was measured on
    trust_seconds: float = 0.0
    explained_variance: float | None = None  # PCA: share of the variance the map keeps

    @property
    def label(self) -> str:
        return METHODS[self.method]


# ---- caching -------------------------------------------------------------------------------------


_PROJECTIONS: KeyedCache[Projection] = KeyedCache(32)
_CLUSTERS: KeyedCache[np.ndarray] = KeyedCache(32)


def fingerprint(vectors: np.ndarray) -> str:
    """Content hash of a matrix: the cache key of a model's embedding space (2 ms for 10k x 64)."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.blake2b(arr.tobytes(), digest_size=16)
    digest.update(repr(arr.shape).encode())
    return digest.hexdigest()


def clear_cache() -> None:
    _PROJECTIONS.clear()
    _CLUSTERS.clear()


def cached_projection(vectors: np.ndarray, params: ProjectionParams, fp: str | None = None) -> Projection | None:
    """The cached map of these vectors with these settings, or None."""
    return _PROJECTIONS.get((fp or fingerprint(vectors), params.key()))


# ---- projecting ----------------------------------------------------------------------------------


def project(vectors: np.ndarray, params: ProjectionParams | None = None, progress: Progress | None = None,
            *, use_cache: bool = True, **overrides: Any) -> Projection:
    """Map `vectors` [n, d] to 2-D/3-D; deterministic for a given seed. Raises `ProjectionCancelled`."""
    params = replace(params or ProjectionParams(), **overrides)
    params.check()
    fp = fingerprint(vectors) if use_cache else ""
    if use_cache and (hit := _PROJECTIONS.get((fp, params.key()))) is not None:
        return hit
    x = _prepare(vectors, params)
    progress = progress or Progress()
    with _omp_threads(OMP_THREADS):
        start = time.perf_counter()
        coords, explained = _RUNNERS[params.method](x, params, progress)
        seconds = time.perf_counter() - start
        _check_cancel(progress)
        progress.update(0, 0, message="measuring trustworthiness")
        start = time.perf_counter()
        trust, sample = trustworthiness_sample(x, coords, seed=params.seed)
    result = Projection(coords.astype(np.float32), params.method, asdict(params), seconds, trust, sample,
                        time.perf_counter() - start, explained)
    if use_cache:
        _PROJECTIONS.put((fp, params.key()), result)
    return result


def _prepare(vectors: np.ndarray, params: ProjectionParams) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a matrix [n, dim], got shape {x.shape}")
    n, d = x.shape
    if d < params.dims:
        raise DataError(f"these embeddings have {d} dimension(s): nothing to project to {params.dims}-D",
                        hint="pick a model with learned embeddings (popularity has a single number per item)")
    if n < max(4, params.dims + 1):
        raise DataError(f"need at least {max(4, params.dims + 1)} points to draw a map, got {n}")
    if not np.isfinite(x).all():
        raise ModelError("embeddings contain NaN or infinite values", hint="retrain the model")
    return _normalized(x) if params.normalize else x


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)  # all-zero rows (e.g. never-seen items) stay at the origin


def _omp_threads(n: int) -> Any:
    # OpenMP's thread count is per calling thread, so this leaves torch and other sessions alone.
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="openmp")


def _check_cancel(progress: Progress) -> None:
    if progress.cancelled:
        raise ProjectionCancelled("projection cancelled")


def _pca(x: np.ndarray, params: ProjectionParams, progress: Progress) -> tuple[np.ndarray, float]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=params.dims, random_state=params.seed)
    coords = pca.fit_transform(x)
    return coords, float(pca.explained_variance_ratio_.sum())


def _tsne(x: np.ndarray, params: ProjectionParams, progress: Progress) -> tuple[np.ndarray, None]:
    from sklearn.manifold import TSNE

    progress.update(0, 0, message="t-SNE: optimising the layout (no step-by-step progress from scikit-learn)")
    perplexity = min(params.perplexity, (len(x) - 1) / 3)  # t-SNE needs perplexity < n
    tsne = TSNE(n_components=params.dims, perplexity=perplexity, init="pca", random_state=params.seed,
                method="barnes_hut")
    return tsne.fit_transform(x), None


_UMAP_WARM = threading.Event()  # set after the first UMAP in this process: numba has compiled its kernels


def _umap(x: np.ndarray, params: ProjectionParams, progress: Progress) -> tuple[np.ndarray, None]:
    first = "" if _UMAP_WARM.is_set() else " (first UMAP in this process: compiling, allow ~30 s extra)"
    progress.update(0, 0, message="UMAP: finding nearest neighbours" + first)
    umap = _import_umap()
    k = max(2, min(params.n_neighbors, len(x) - 1))
    kwargs: dict[str, Any] = {}
    if len(x) <= EXACT_KNN_MAX:
        # Exact neighbours from a blocked matmul: faster than NN-descent here, exact, and it skips
        # compiling pynndescent's numba kernels (about two thirds of UMAP's first-call time).
        kwargs["precomputed_knn"] = (*exact_knn(x, k), None)
    _check_cancel(progress)
    writer = _EpochWriter(progress)
    reducer = umap.UMAP(n_components=params.dims, n_neighbors=k, min_dist=params.min_dist, n_epochs=params.n_epochs,
                        random_state=params.seed, n_jobs=1, low_memory=True, metric="euclidean",
                        tqdm_kwds={"disable": False, "file": writer, "bar_format": "{n}/{total}", "mininterval": 0.2},
                        **kwargs)
    coords = reducer.fit_transform(x)
    _UMAP_WARM.set()
    _check_cancel(progress)
    return coords, None


def _import_umap() -> Any:
    import umap

    # We pass exact neighbours without a search index, so `transform` of new points is unavailable; we never call it.
    warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
    return umap


class _EpochWriter:
    """A file for UMAP's tqdm bar ("n/total"): turns each refresh into a progress event, and a cancel into
    `ProjectionCancelled` at the next epoch report, so UMAP stops within about `mininterval` seconds."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._raised = False

    def write(self, text: str) -> None:
        done, _, total = text.strip().partition("/")
        if not (done.isdigit() and total.isdigit()):
            return
        if self.progress.cancelled:
            if not self._raised and int(done) < int(total):
                self._stop()
            return
        self.progress.update(int(done), int(total), message="UMAP: optimising the layout (epochs)")

    def _stop(self) -> None:
        # A mid-run report comes from `tqdm.refresh`, which holds tqdm's process-wide write lock once and
        # would skip releasing it when this raises (it has no try/finally): release it here, or every
        # later progress bar in the process would wait forever. The final report ("n/n", from `close`,
        # inside a `with` block) never raises, and neither does any report after the first raise.
        from tqdm import tqdm

        self._raised = True
        tqdm.get_lock().release()
        raise ProjectionCancelled("projection cancelled")

    def flush(self) -> None:
        pass


_RUNNERS = {"pca": _pca, "umap": _umap, "tsne": _tsne}


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices int32 [n, k], euclidean distances float32 [n, k]); each point is its own first neighbour."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (t * t).sum(1)
    block = max(1, _BLOCK_ELEMENTS // len(t))
    out_i, out_d = [], []
    for start in range(0, len(t), block):
        rows = torch.arange(start, min(start + block, len(t)))
        d2 = (sq[rows, None] + sq[None, :] - 2.0 * (t[rows] @ t.T)).clamp_min_(0.0)
        d2[torch.arange(len(rows)), rows] = -1.0  # self first, even among duplicates
        dist, idx = torch.topk(d2, k, dim=1, largest=False)
        out_i.append(idx)
        out_d.append(dist.clamp_min(0.0).sqrt())
    return torch.cat(out_i).numpy().astype(np.int32), torch.cat(out_d).numpy().astype(np.float32)


def trustworthiness_sample(x: np.ndarray, coords: np.ndarray, sample: int = TRUST_SAMPLE,
                           n_neighbors: int = TRUST_NEIGHBOURS, seed: int = 0) -> tuple[float, int]:
    """sklearn's trustworthiness on at most `sample` points (a seeded random subset): (value, points used)."""
    from sklearn.manifold import trustworthiness

    n = len(x)
    rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False)) if n > sample else np.arange(n)
    k = min(n_neighbors, (len(rows) - 1) // 2)  # sklearn needs k < n / 2
    if k < 1:
        return float("nan"), len(rows)
    return float(trustworthiness(x[rows], coords[rows], n_neighbors=k)), len(rows)


# ---- neighbours and colourings -------------------------------------------------------------------


def nearest_neighbours(vectors: np.ndarray, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar rows to row `item` in the original space (itself excluded), best first."""
    x = torch.from_numpy(_normalized(np.asarray(vectors, dtype=np.float32)))
    sims = x @ x[item]
    sims[item] = float("-inf")
    k = min(k, len(x) - 1)
    values, idx = torch.topk(sims, k)
    return idx.numpy(), values.numpy()


def map_ranks(coords: np.ndarray, item: int, others: np.ndarray) -> np.ndarray:
    """1-based rank of each of `others` among `item`'s neighbours ON THE MAP (1 = closest on the map)."""
    d = np.linalg.norm(coords - coords[item], axis=1)
    d[item] = np.inf
    order = np.argsort(d, kind="stable")
    rank = np.empty(len(d), dtype=np.int64)
    rank[order] = np.arange(1, len(d) + 1)
    return rank[np.asarray(others, dtype=np.int64)]


def first_attribute(values: Sequence[Any], sep: str = "|", top: int = 12, missing: str = "(none)",
                    other: str = "other") -> np.ndarray:
    """First value of a '|'-joined attribute (e.g. first genre) per row; beyond the `top` most common, `other`."""
    first = [(v.split(sep, 1)[0].strip() or missing) if isinstance(v, str) else missing for v in values]
    return _keep_top(np.asarray(first, dtype=object), top, other)


def dominant_attribute(indptr: np.ndarray, seq_items: np.ndarray, item_labels: np.ndarray, top: int = 12,
                       other: str = "other", missing: str = "(none)") -> np.ndarray:
    """Per user, the item label met most often in their history (e.g. favourite first genre); vectorised."""
    cats, codes = np.unique(np.asarray(item_labels, dtype=object).astype(str), return_inverse=True)
    n_users = len(indptr) - 1
    users = np.repeat(np.arange(n_users), np.diff(indptr))
    counts = np.bincount(users * len(cats) + codes[seq_items], minlength=n_users * len(cats))
    counts = counts.reshape(n_users, len(cats))
    labels = cats[counts.argmax(1)].astype(object)
    labels[counts.sum(1) == 0] = missing
    return _keep_top(labels, top, other)


def _keep_top(labels: np.ndarray, top: int, other: str) -> np.ndarray:
    cats, counts = np.unique(labels.astype(str), return_counts=True)
    if len(cats) <= top:
        return labels
    keep = set(cats[np.argsort(-counts, kind="stable")[:top]])
    return np.where(np.isin(labels.astype(str), list(keep)), labels, other).astype(object)


def log_popularity(counts: np.ndarray) -> np.ndarray:
    """log10(1 + count): interaction counts are heavy-tailed, a linear colour scale would show only the head."""
    return np.log10(1.0 + np.asarray(counts, dtype=np.float64))


def kmeans_clusters(vectors: np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """Cluster label per row, k-means on the L2-normalised ORIGINAL vectors (not on the map); cached."""
    key = (fingerprint(vectors), int(k), int(seed))
    if (hit := _CLUSTERS.get(key)) is not None:
        return hit
    from sklearn.cluster import KMeans

    x = _normalized(np.asarray(vectors, dtype=np.float32))
    k = max(1, min(int(k), len(x)))
    with _omp_threads(OMP_THREADS):
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x).astype(np.int32)
    _CLUSTERS.put(key, labels)
    return labels


def sample_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """All row indices, or a seeded sorted random subset of `limit` of them (maps of huge user bases)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


# ---- background jobs -----------------------------------------------------------------------------


class ProjectionJob(BackgroundJob):
    """One `project` call on its own thread; `result` is its `Projection`."""

    def __init__(self, vectors: np.ndarray, params: ProjectionParams, fp: str | None = None) -> None:
        super().__init__(name=f"project-{params.method}")
        self.params = params
        self.key = (fp or fingerprint(vectors), params.key())  # what it maps: a page compares it to its settings
        self.result: Projection | None = None
        self._vectors = vectors

    def work(self) -> tuple[Projection | None, str]:
        try:
            result = project(self._vectors, self.params, self.progress)
        except ProjectionCancelled:
            return None, "cancelled"
        # t-SNE cannot stop early: a cancel during it only discards the result here.
        return (None, "cancelled") if self.progress.cancelled else (result, "finished")

    def release(self) -> None:
        self._vectors = None  # the job may outlive the page that started it: drop the big array

    @property
    def message(self) -> str:
        events = self.progress.snapshot()
        return events[-1].message if events else ""


# ---- workspace jobs ------------------------------------------------------------------------------


def projection_work(vectors: np.ndarray, params: ProjectionParams):
    """The work of a workspace job (`background.WorkspaceJob`) drawing this map: its result is the map as
    arrays and numbers (`projection_result`), or None when cancelled."""

    def work(progress: Progress) -> dict[str, Any] | None:
        try:
            result = project(vectors, params, progress)
        except ProjectionCancelled:
            return None
        return None if progress.cancelled else projection_result(result)

    return work


def projection_result(proj: Projection) -> dict[str, Any]:
    """A map as a job result: `coords` as an array, the rest as JSON values."""
    return {"coords": proj.coords, "method": proj.method, "params": proj.params, "seconds": proj.seconds,
            "trustworthiness": proj.trustworthiness, "trust_sample": proj.trust_sample,
            "trust_seconds": proj.trust_seconds, "explained_variance": proj.explained_variance}


def from_result(result: dict[str, Any], fp: str) -> Projection:
    """The map a job stored, put back in this process's cache under its vectors' fingerprint `fp`."""
    proj = Projection(np.asarray(result["coords"], dtype=np.float32), result["method"], dict(result["params"]),
                      float(result["seconds"]), float(result["trustworthiness"]), int(result["trust_sample"]),
                      float(result["trust_seconds"]), result["explained_variance"])
    _PROJECTIONS.put((fp, ProjectionParams(**proj.params).key()), proj)
    return proj
