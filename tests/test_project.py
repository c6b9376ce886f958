"""Embedding maps: shapes, determinism, trust figures that mean something, neighbours searched in the
original space, colourings, cancellable background jobs. Small data keeps t-SNE/UMAP quick."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from recsys_core.background import WorkspaceJob
from recsys_core.errors import ConfigError, DataError, ModelError
from recsys_core.insight import project as P
from recsys_core.progress import Progress
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace


@pytest.fixture(autouse=True)
def _fresh_cache():
    P.clear_cache()
    yield
    P.clear_cache()


def _clusters(n: int = 200, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.mark.parametrize("method", ["pca", "tsne"])
@pytest.mark.parametrize("dims", [2, 3])
def test_maps_have_one_row_per_vector_and_the_requested_dimensions(method: str, dims: int) -> None:
    x, _ = _clusters()
    result = P.project(x, method=method, dims=dims)
    assert result.coords.shape == (200, dims)
    assert result.coords.dtype == np.float32 and np.isfinite(result.coords).all()
    assert result.method == method and result.params["dims"] == dims
    assert 0.0 <= result.trustworthiness <= 1.0 and result.trust_sample == 200
    assert result.seconds >= 0.0


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_same_seed_same_map(method: str) -> None:
    x, _ = _clusters()
    a = P.project(x, method=method, seed=3, use_cache=False)
    b = P.project(x, method=method, seed=3, use_cache=False)
    np.testing.assert_array_equal(a.coords, b.coords)


def test_umap_shapes_determinism_progress_and_cancel(tmp_path) -> None:
    """One test for UMAP: its first call in a process compiles numba kernels (tens of seconds)."""
    x, _ = _clusters()
    events: list = []
    first = P.project(x, method="umap", dims=3, seed=1, n_epochs=50, use_cache=False,
                      progress=Progress(callback=events.append))
    again = P.project(x, method="umap", dims=3, seed=1, n_epochs=50, use_cache=False)
    assert first.coords.shape == (200, 3)
    np.testing.assert_array_equal(first.coords, again.coords)
    assert first.trustworthiness > 0.8  # well-separated clusters keep their neighbourhoods
    epochs = [e for e in events if e.total]
    assert epochs and epochs[-1].step == epochs[-1].total == 50  # the epoch bar reached the page's progress

    # Cancel as soon as the layout starts: UMAP stops at its next epoch report, nothing is kept.
    job = P.ProjectionJob(x, P.ProjectionParams(method="umap", seed=2, n_epochs=500))
    job.progress = Progress(callback=lambda e: job.cancel() if e.total else None)  # cancel at the first epoch
    job.start().join(60)
    assert job.state == "cancelled" and job.result is None
    assert P.cached_projection(x, job.params) is None
    _tqdm_lock_is_free()  # stopping UMAP mid-run left no progress bar of the process waiting forever

    # As a workspace job: a cancel from another store (another tab) stops a long UMAP within 2 s.
    store = JobStore(Workspace(tmp_path / "ws"))
    params = P.ProjectionParams(method="umap", seed=3, n_epochs=100_000)
    map_job = WorkspaceJob.start(store, "projection", "clusters", P.projection_work(x, params))
    other = JobStore(Workspace(tmp_path / "ws"))
    deadline = time.monotonic() + 60
    while other.get(map_job.id).step == 0:
        assert time.monotonic() < deadline, "UMAP never reported an epoch"
        time.sleep(0.05)
    asked = time.monotonic()
    other.request_cancel(map_job.id)
    assert map_job.join(10)
    assert time.monotonic() - asked < 2.0 and other.get(map_job.id).status == "cancelled"
    _tqdm_lock_is_free()

    # A finished map is stored in the workspace and read back, identical, by a process that never computed it.
    done = WorkspaceJob.start(store, "projection", "clusters", P.projection_work(x, P.ProjectionParams(
        method="umap", seed=1, n_epochs=50)))
    assert done.join(60) and done.record().status == "finished"
    P.clear_cache()
    back = P.from_result(other.load_result(done.id), P.fingerprint(x))
    direct = P.project(x, method="umap", seed=1, n_epochs=50, use_cache=False)
    np.testing.assert_array_equal(back.coords, direct.coords)
    assert back.method == "umap" and back.trustworthiness == pytest.approx(direct.trustworthiness)
    assert P.cached_projection(x, P.ProjectionParams(method="umap", seed=1, n_epochs=50)) is back


def _tqdm_lock_is_free() -> None:
    from tqdm import tqdm

    got = []

    def probe() -> None:  # from another thread: the lock is re-entrant for the thread that holds it
        lock = tqdm.get_lock().locks[-1]
        got.append(lock.acquire(timeout=5))
        if got[-1]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert got == [True]


def test_pca_of_intrinsically_2d_data_is_fully_trustworthy_and_of_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(500, 2)) @ rng.normal(size=(2, 10))  # a 2-D plane inside 10-D
    assert P.project(plane, method="pca", normalize=False).trustworthiness > 0.999
    assert P.project(plane, method="pca", normalize=False).explained_variance == pytest.approx(1.0, abs=1e-5)
    noise = rng.normal(size=(500, 50))  # nothing 2-D about it: the map must say so
    assert P.project(noise, method="pca").trustworthiness < 0.8


def test_trustworthiness_is_measured_on_a_bounded_sample() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    value, used = P.trustworthiness_sample(x, x[:, :2], sample=500)
    assert used == 500 and 0.0 <= value <= 1.0
    assert P.trustworthiness_sample(x, x[:, :2], sample=500)[0] == value  # a seeded subset: same figure each time
    assert P.trustworthiness_sample(x, x[:, :2], sample=500, seed=1)[0] != value


def _torn_neighbourhood() -> tuple[np.ndarray, int, int, int]:
    """q's nearest neighbour by cosine is `a`, but on a 2-D map `b` lands exactly on q.

    Filler points on the unit circle of the x-y plane make that plane the PCA map; q and b differ
    only along z (flattened away), while a is 16 degrees from q in the original space.
    """
    angles = np.deg2rad(np.linspace(40, 320, 200))
    filler = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    q, a, b = [0.6, 0.0, 0.8], [0.8, 0.0, 0.6], [0.6, 0.0, -0.8]
    x = np.vstack([filler, [q, a, b]]).astype(np.float32)
    return x, 200, 201, 202


def test_neighbours_come_from_the_original_space_not_the_map() -> None:
    x, q, a, b = _torn_neighbourhood()
    coords = P.project(x, method="pca").coords
    assert P.map_ranks(coords, q, np.array([b, a])).tolist() == [1, 2]  # on the map, b is closest
    idx, sims = P.nearest_neighbours(x, q, k=3)
    assert idx[0] == a and sims[0] == pytest.approx(0.96, abs=1e-5)
    assert b not in idx  # cos(q, b) = -0.28: far in the space the model scores with
    assert q not in idx and np.all(np.diff(sims) <= 0)


def test_cache_returns_the_same_map_and_separates_settings_and_spaces() -> None:
    x, _ = _clusters()
    first = P.project(x, method="pca")
    assert P.project(x.copy(), method="pca") is first  # keyed by content, not object identity
    assert P.cached_projection(x, P.ProjectionParams(method="pca", n_epochs=7)) is first  # UMAP-only knob
    assert P.project(x, method="pca", dims=3) is not first
    assert P.project(x + 1, method="pca") is not first
    assert P.fingerprint(x) != P.fingerprint(x[:, ::-1])


def test_kmeans_finds_clusters_in_the_original_space() -> None:
    x, labels = _clusters(n=300, d=32, k=5)
    found = P.kmeans_clusters(x, k=5, seed=0)
    assert adjusted_rand_score(labels, found) > 0.95
    np.testing.assert_array_equal(found, P.kmeans_clusters(x, k=5, seed=0))


def test_first_attribute_takes_the_first_genre_and_groups_rare_ones() -> None:
    labels = P.first_attribute(["Drama|Comedy", "Comedy", None, "", "Horror|Drama", "Drama"], top=2)
    assert labels.tolist() == ["Drama", "other", "(none)", "(none)", "other", "Drama"]


def test_dominant_attribute_is_the_most_frequent_label_in_each_history() -> None:
    item_labels = np.array(["Drama", "Comedy", "Horror"], dtype=object)
    indptr = np.array([0, 3, 3, 5])  # user 1 has no history
    seq = np.array([1, 0, 1, 2, 2])
    assert P.dominant_attribute(indptr, seq, item_labels).tolist() == ["Comedy", "(none)", "Horror"]


def test_log_popularity_compresses_the_head() -> None:
    out = P.log_popularity(np.array([0, 9, 99, 999]))
    np.testing.assert_allclose(out, [0, 1, 2, 3])


def test_exact_knn_puts_each_point_first_and_matches_brute_force() -> None:
    x, _ = _clusters(n=300)
    idx, dist = P.exact_knn(x, 5)
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], atol=1e-3)


def test_bad_inputs_raise_a_data_error_naming_the_problem() -> None:
    with pytest.raises(DataError, match="1 dimension"):
        P.project(np.arange(50, dtype=np.float32)[:, None], method="pca")
    with pytest.raises(ConfigError, match="unknown projection method"):
        P.project(np.ones((10, 4)), method="mds")
    with pytest.raises(ModelError, match="NaN"):
        P.project(np.full((10, 4), np.nan), method="pca")


def test_background_job_finishes_or_reports_the_failure() -> None:
    x, _ = _clusters()
    job = P.ProjectionJob(x, P.ProjectionParams(method="tsne", dims=2)).start()
    job.join(120)
    assert job.state == "finished" and job.result.coords.shape == (200, 2)
    assert P.cached_projection(x, job.params) is job.result  # the page's rerun finds it without recomputing
    bad = P.ProjectionJob(np.ones((10, 1)), P.ProjectionParams(method="pca")).start()
    bad.join(30)
    assert bad.state == "failed" and "dimension" in bad.error
