"""`recsys serve` for real: server processes on loopback (no mocked transport) over a workspace with trained runs.

The same 50 users with filters get the same top-K from the page's function, the CLI and the API; every bad request
class gets a 4xx JSON {error, hint}; the key is required when set; a new best run is swapped in under concurrent
load with no failed request; /metrics counts what was sent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recsys_core.data.demo import DEMO_NAME, load_demo
from recsys_core.models.base import load_model
from recsys_core.recommend.usecases import Query
from recsys_core.training.experiment import make_model, run_experiment
from recsys_core.workspace.registry import Workspace

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-7f3a"
FILTERS = {"any_of": {"genres": ["Drama", "Comedy"]}, "between": {"year": [1990, None]}}
HIDE = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(ws: Path, *flags: str, key: str | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "CI": "true"}
    env.pop("RECSYS_API_KEY", None)
    if key:
        env["RECSYS_API_KEY"] = key
    proc = subprocess.Popen([sys.executable, "-m", "recsys_core", "--workspace", str(ws), "serve", "--dataset", "demo",
                             "--port", str(port), "--threads", "1", *flags], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if _call(url, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


def _call(url: str, method: str, path: str, body: object = None, *, raw: bytes | None = None,
          headers: dict | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """A workspace with popularity and EASE runs (EASE is the best), and two servers on it: `open` (no key,
    batching off, polling every 0.2 s) and `keyed` (RECSYS_API_KEY set, batching on, no polling, 2 workers)."""
    ws_root = tmp_path_factory.mktemp("api") / "workspace"
    ws = Workspace(ws_root)
    ws.ensure_demo()
    ds = load_demo()
    runs = {f: run_experiment(ds, f, workspace=ws, dataset_name=DEMO_NAME) for f in ("popularity", "ease")}
    started = {"open": _start(ws_root, "--poll-s", "0.2", "--batch", "off"),
               "keyed": _start(ws_root, "--poll-s", "0", "--batch", "on", "--batch-wait-ms", "5", "--workers", "2",
                               key=KEY)}
    try:
        for proc, url in started.values():
            _wait(proc, url)
        yield {"ws": ws, "root": ws_root, "ds": ds, "runs": runs, "keyed_pid": started["keyed"][0].pid,
               **{name: url for name, (_, url) in started.items()}}
    finally:
        for proc, _ in started.values():
            proc.terminate()
        for proc, _ in started.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def test_fifty_users_with_filters_get_the_same_top_k_from_page_cli_and_api(servers) -> None:
    from views.ui.model_state import recommendations  # the Recommend page's own function

    ds = servers["ds"]
    folder = str(servers["runs"]["ease"].artifact_dir)
    model = load_model(folder)
    users = [str(u) for u in ds.user_ids[np.random.default_rng(1).choice(ds.n_users, 50, replace=False)]]
    page = {u: recommendations(model, ds, Query.of(user=u, k=10, hide_popular_top=HIDE, **FILTERS))["item_id"].tolist()
            for u in users}
    cli = subprocess.run([sys.executable, "-m", "recsys_core", "--workspace", str(servers["root"]), "recommend",
                          "--model-dir", folder, "--dataset", "demo", "-k", "10", "--filter", "genres=Drama,Comedy",
                          "--range", "year=1990:", "--hide-popular", str(HIDE), "--user", *users],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert cli.returncode == 0, cli.stderr[-2000:]
    by_cli = {r["user"]: [x["item_id"] for x in r["recommendations"]] for r in json.loads(cli.stdout)["results"]}

    def ask(user: str) -> list[str]:
        status, body = _call(servers["keyed"], "POST", "/v1/recommend",
                             {"user": user, "k": 10, "filters": FILTERS, "hide_popular_top": HIDE}, headers=_auth())
        assert status == 200, body
        return [x["item_id"] for x in body["recommendations"]]

    with ThreadPoolExecutor(8) as pool:  # concurrent: the keyed server coalesces them into shared passes
        by_api = dict(zip(users, pool.map(ask, users), strict=True))
    assert all(len(page[u]) == 10 for u in users)
    assert by_api == page == by_cli


def test_a_live_history_is_scored_as_given_and_unknown_ids_are_named_or_ignored(servers) -> None:
    ds, url = servers["ds"], servers["open"]
    user = int(np.argmax(np.diff(ds.indptr) > 6))
    history = [str(i) for i in ds.item_ids[ds.history(user)]]
    status, by_user = _call(url, "POST", "/v1/recommend", {"user": str(ds.user_ids[user]), "k": 5})
    assert status == 200
    status, by_history = _call(url, "POST", "/v1/recommend", {"history": history, "k": 5, "explain": True})
    assert status == 200 and by_history["recommendations"] == by_user["recommendations"]
    assert set(by_history["explain"]["items"]) == {r["item_id"] for r in by_history["recommendations"]}
    status, body = _call(url, "POST", "/v1/recommend", {"history": [*history, "no-such-item"], "k": 5})
    assert status == 404 and "no-such-item" in body["error"] and "ignore" in body["hint"]
    status, body = _call(url, "POST", "/v1/recommend", {"history": [*history, "no-such-item"], "k": 5,
                                                         "unknown_items": "ignore"})
    assert status == 200 and body["ignored"] == ["no-such-item"]
    assert body["recommendations"] == by_user["recommendations"]
    first = by_user["recommendations"][0]["item_id"]
    status, item = _call(url, "GET", f"/v1/items/{first}")
    assert status == 200 and item["label"] == ds.labels[ds.item_index[first]]
    status, near = _call(url, "POST", "/v1/similar", {"item_id": first, "k": 3})
    assert status == 200 and len(near["similar"]) == 3


@pytest.mark.parametrize(("body", "raw", "status", "words"), [
    ({"user": "no-such-user"}, None, 404, "no-such-user"),
    ({"history": ["nope-1", "nope-2"]}, None, 404, "nope-1"),
    ({"user": "{user}", "k": 0}, None, 422, "k must be between"),
    ({"user": "{user}", "k": 101}, None, 422, "k must be between"),
    ({"history": ["{item}"] * 501}, None, 413, "at most 500"),
    (None, b'{"history": [' + b'"x",' * 40_000 + b'"x"]}', 413, "larger than"),
    (None, b'{"user": ', 400, "not valid JSON"),
    ({"user": "{user}", "k": "ten"}, None, 422, "k"),
    ({"user": "{user}", "exclude_seen": "perhaps"}, None, 422, "exclude_seen"),
    ({"user": "{user}", "history": ["{item}"]}, None, 422, "either a user id or a history"),
    ({"user": "{user}", "colour": "red"}, None, 422, "colour"),
    ({"user": "{user}", "filters": {"any_of": {"colour": ["red"]}}}, None, 422, "colour"),
])
def test_every_bad_request_gets_a_4xx_json_error_with_a_hint(servers, body, raw, status, words) -> None:
    ds = servers["ds"]
    if body is not None:
        body = json.loads(json.dumps(body).replace("{user}", str(ds.user_ids[0])).replace("{item}", str(ds.item_ids[0])))
    got, answer = _call(servers["open"], "POST", "/v1/recommend", body, raw=raw)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["hint"] and words in answer["error"], answer
    assert "Traceback" not in json.dumps(answer)


def test_the_key_is_required_when_set_and_compared_whole(servers) -> None:
    user = str(servers["ds"].user_ids[0])
    body = {"user": user, "k": 3}
    assert _call(servers["keyed"], "POST", "/v1/recommend", body)[0] == 401
    assert _call(servers["keyed"], "POST", "/v1/recommend", body, headers={"Authorization": f"Bearer {KEY}x"})[0] == 401
    assert _call(servers["keyed"], "POST", "/v1/recommend", body, headers={"Authorization": f"Bearer {KEY[:-1]}"})[0] == 401
    assert _call(servers["keyed"], "GET", f"/v1/items/{servers['ds'].item_ids[0]}")[0] == 401
    assert _call(servers["keyed"], "POST", "/v1/recommend", body, headers=_auth())[0] == 200
    assert _call(servers["keyed"], "POST", "/v1/recommend", body, headers={"X-API-Key": KEY})[0] == 200
    assert _call(servers["keyed"], "GET", "/healthz")[0] == 200  # probes need no key
    assert _call(servers["open"], "POST", "/v1/recommend", body)[0] == 200  # no key set: open
    status, docs = _call(servers["open"], "GET", "/openapi.json")
    assert status == 200 and "/v1/recommend" in docs["paths"]


def _counter(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def _sample(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` (0 when absent)."""
    return next((float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(f"{name} ")), 0.0)


def test_metrics_count_what_two_workers_answered_and_the_workers_share_pages(servers) -> None:
    import psutil

    url, user = servers["keyed"], str(servers["ds"].user_ids[1])
    before = _call(url, "GET", "/metrics")[1]
    for _ in range(7):
        assert _call(url, "POST", "/v1/recommend", {"user": user, "k": 3}, headers=_auth())[0] == 200
    for _ in range(3):
        assert _call(url, "POST", "/v1/recommend", {"user": "nobody"}, headers=_auth())[0] == 404
    after = _call(url, "GET", "/metrics")[1]

    def delta(name: str, **labels: str) -> float:
        return _counter(after, name, **labels) - _counter(before, name, **labels)

    assert delta("recsys_api_requests_total", endpoint="/v1/recommend", status="200") == 7
    assert delta("recsys_api_requests_total", endpoint="/v1/recommend", status="404") == 3
    assert delta("recsys_api_errors_total", endpoint="/v1/recommend", status="404") == 3
    assert delta("recsys_api_request_seconds_count", endpoint="/v1/recommend") == 10
    version = load_model(servers["runs"]["ease"].artifact_dir).identity
    assert f'model_version="{version}"' in after
    assert _sample(after, "recsys_api_batch_size_count") - _sample(before, "recsys_api_batch_size_count") == 7  # 404s
    # are refused before they join a batch; the keyed server's sequential requests are batches of one
    assert _call(url, "GET", "/readyz")[1]["batching"] is True  # --batch on
    assert _call(servers["open"], "GET", "/readyz")[1]["batching"] is False  # --batch off
    workers = psutil.Process(servers["keyed_pid"]).children()
    assert len(workers) == 2 and _counter(after, "recsys_api_model_info") == 2  # one live series per worker
    for worker in workers:  # forked after loading: torch, the model and the dataset are shared pages
        memory = worker.memory_full_info()
        assert memory.uss < 0.5 * memory.rss, memory


def test_a_new_best_run_is_swapped_in_under_load_without_a_failed_request(servers) -> None:
    ds, ws, url = servers["ds"], servers["ws"], servers["open"]
    old = _call(url, "GET", "/readyz")[1]["model_version"]
    stop, seen, failures = threading.Event(), {w: [] for w in range(4)}, []
    users = [str(u) for u in ds.user_ids[:40]]

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            status, body = _call(url, "POST", "/v1/recommend", {"user": users[(worker * 7 + n) % 40], "k": 10})
            n += 1
            if status != 200 or len(body["recommendations"]) != 10:
                failures.append((status, body))
            else:
                seen[worker].append(body["model_version"])

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        knn = make_model("itemknn", {}).fit(ds)
        folder = knn.save(ws.models_dir() / "run-manual-itemknn")
        ws.record_run(DEMO_NAME, "itemknn", {}, {"ndcg@10": 0.99}, "cpu", 0.1, folder)  # now the best finished run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _call(url, "GET", "/readyz")[1]["model"] != "itemknn":
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    ready = _call(url, "GET", "/readyz")[1]
    assert ready["model"] == "itemknn" and ready["swaps"] == 1
    assert failures == []
    new = ready["model_version"]
    for versions in seen.values():  # every client: the old model, then the new one, never back
        assert versions[0] == old and versions[-1] == new and len(versions) > 5
        assert versions == sorted(versions, key=lambda v: v == new)



def test_concurrent_requests_are_coalesced_into_one_forward_pass_with_the_answers_of_each_alone(servers) -> None:
    import asyncio

    from recsys_core.api.serving import Coalescer, Served
    from recsys_core.recommend.usecases import Limits, recommend_for

    ds = servers["ds"]
    folder = str(servers["runs"]["ease"].artifact_dir)
    served = Served(load_model(folder), ds, folder, None, "test")
    coalescer = Coalescer(Limits(), max_batch=8, wait_ms=200.0, mode="on")
    queries = [Query.of(user=str(u), k=5 + i % 3, hide_popular_top=0.1 * (i % 2)) for i, u in enumerate(ds.user_ids[:12])]

    async def all_at_once():
        return await asyncio.gather(*(coalescer.recommend(served, q) for q in queries))

    try:
        answers = asyncio.run(all_at_once())
    finally:
        coalescer.close()
    assert coalescer.batch_sizes == [8, 4]  # max_batch, then the rest: two forward passes for 12 requests
    for query, answer in zip(queries, answers, strict=True):
        assert answer.items.tolist() == recommend_for(served.model, ds, query).items.tolist()
