"""`recsys serve` under load: the real server in its own process, an open-loop load generator in another.

Per model (popularity, EASE, item-kNN, SASRec+, BERT4Rec; a model the data refuses is skipped and says why):
the server (`recsys serve --model-dir`, one torch thread per worker) answers `POST /v1/recommend` for random
users (k=10) sent at fixed arrival rates by an aiohttp client (on uvloop) in a separate process. Each request's latency is
counted from the moment it was due, not when it went out, so a server that falls behind is charged for the
queue (no coordinated omission). Per rate: p50 / p95 / p99, error rate (non-200 or no answer in 5 s), the rate
achieved. A series stops at the first rate whose p99 passes 1 s or errors pass 5 % (the rates above are
"saturated"). Also, in this process with one thread: the in-process floor (`recommend_for` per user, and
`recommend_batch` of 32 per user); batching on (the default, every series) vs off for the sequential models and EASE; 1 vs 2 workers
with each process's RSS and PSS (shared pages count once in PSS).

The models' weights only need to cost what a trained model costs per request, so they train briefly
(`--train-steps`) on all interactions: quality is not measured here.

    python bench/serve.py --dataset demo
    python bench/serve.py --dataset synthetic-100k                 # 100k items, generated (Zipf popularity)
    python bench/serve.py --dataset demo --models ease --rates 20,50 --duration 1 --no-write   # a smoke run

JSON to bench/results/serve-<dataset>-<YYYYMMDD>.json: per model `max_rps_p99_50ms`, `p99_ms_at_<rate>rps`,
`http_overhead_p50_ms` (one kept-alive request at a time, p50, minus the in-process p50; the open loop's lowest
rate is `open_loop_overhead_p50_ms`), `batching_gain`, `load_avg`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import numpy as np

FAMILIES = ("popularity", "ease", "itemknn", "sasrec", "bert4rec")
SEQUENTIAL = ("sasrec", "bert4rec")
DEFAULT_RATES = (50, 100, 200, 400, 800, 1000)
P99_GOAL_MS = 50.0
SATURATED_P99_MS, SATURATED_ERRORS = 1000.0, 0.05
TIMEOUT_S = 5.0
SYNTHETIC_ITEMS, SYNTHETIC_USERS, SYNTHETIC_PER_USER = 100_000, 20_000, 30


# ---- the load generator (its own process) ---------------------------------------------------------


async def _open_loop(session, url: str, bodies: list[bytes], rate: float, duration: float, headers: dict) -> dict:
    """Requests due every 1/rate s on `session` (one for every rate, so its kept-alive connections carry over as a
    client's would), each charged from when it was due. Times come from `time.perf_counter`: uvloop's
    `loop.time()` is whole milliseconds, cached per loop turn. `late_*` is how late the client itself sent
    (its sleep wakes up to ~1 ms late, and more on a busy box): part of every latency, not the server's doing."""
    import aiohttp

    latencies: list[float] = []
    late: list[float] = []
    errors = 0
    n = max(1, int(rate * duration))

    async def one(i: int, due: float) -> None:
        nonlocal errors
        late.append(time.perf_counter() - due)
        try:
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as answer:
                await answer.read()
                ok = answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i, due)))
    sent_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    ms, late_ms = np.asarray(latencies) * 1000.0, np.asarray(late) * 1000.0
    pct = {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) if len(ms) else None for q in (50, 95, 99)}
    return {"rate": rate, "requests": n, **pct, "error_rate": round(errors / n, 4),
            "achieved_rps": round(n / max(sent_s, 1e-9), 1), "late_p50_ms": round(float(np.median(late_ms)), 3),
            "late_p99_ms": round(float(np.percentile(late_ms, 99)), 3)}


def sequential(url: str, bodies: list[bytes], n: int = 300) -> dict:
    """One request at a time on one kept-alive connection (http.client): the round trip without any queue."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)
    times = []
    for i in range(n):
        started = time.perf_counter()
        connection.request("POST", parts.path, bodies[i % len(bodies)], {"Content-Type": "application/json"})
        connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    ms = np.asarray(times[20:]) * 1000.0  # the first ones warm the connection
    return {"requests": len(ms), "p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def loadgen(spec: dict) -> dict:
    """A sequential round trip, then each rate in turn (after a short warm-up), stopping at saturation."""
    import gc

    import uvloop  # the client's own loop costs less CPU on uvloop: less of the shared 2 cores taken from the server

    bodies = [json.dumps(b).encode() for b in spec["bodies"]]
    alone = sequential(spec["url"], bodies)
    gc.freeze()  # a collection pause in the client would be charged to the server's latency
    return {"sequential": alone, "rates": uvloop.run(_rates(spec, bodies))}


async def _rates(spec: dict, bodies: list[bytes]) -> list[dict]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        await _open_loop(session, spec["url"], bodies, 20.0, 1.0, headers)  # connections and caches warm
        out = []
        for rate in spec["rates"]:
            result = await _open_loop(session, spec["url"], bodies, float(rate), spec["duration"], headers)
            out.append(result)
            if result["error_rate"] > SATURATED_ERRORS or (result["p99_ms"] or 1e9) > SATURATED_P99_MS:
                break
    return out


# ---- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ws: Path, dataset: str, folder: str, batch: str, workers: int) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recsys_core", "--workspace", str(ws), "serve", "--dataset", dataset,
                             "--model-dir", folder, "--port", str(port), "--batch", batch, "--workers", str(workers),
                             "--threads", "1", "--poll-s", "0"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start in 300 s")


def memory(proc: subprocess.Popen) -> list[dict]:
    """RSS and PSS (MB) of the server and each of its worker processes."""
    import psutil

    root = psutil.Process(proc.pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            full = p.memory_full_info()
        except psutil.Error:
            continue
        out.append({"pid": p.pid, "rss_mb": round(full.rss / 2**20, 1), "pss_mb": round(getattr(full, "pss", 0) / 2**20, 1)})
    return out


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def series(ws: Path, dataset: str, folder: str, bodies: list[dict], rates: list[int], duration: float,
           batch: str = "on", workers: int = 1) -> dict:
    """One server, the load generator over `rates`, the server's memory after the load."""
    proc, url = start_server(ws, dataset, folder, batch, workers)
    try:
        spec = {"url": url + "/v1/recommend", "bodies": bodies, "rates": rates, "duration": duration}
        gen = subprocess.run([sys.executable, __file__, "--loadgen"], input=json.dumps(spec), capture_output=True,
                             text=True, check=False, timeout=600)
        if gen.returncode != 0:
            raise RuntimeError(gen.stderr[-2000:])
        answer = json.loads(gen.stdout)
        by_rate = answer["rates"]
        return {"batch": batch, "workers": workers, "sequential": answer["sequential"], "rates": by_rate,
                "memory": memory(proc),
                "max_rps_p99_50ms": max_rate(by_rate), "saturated_above": _saturated(by_rate, rates)}
    finally:
        stop(proc)


def max_rate(by_rate: list[dict]) -> float:
    """The highest rate with p99 <= 50 ms and at most 1 % errors (0 when none)."""
    good = [r["rate"] for r in by_rate if r["p99_ms"] is not None and r["p99_ms"] <= P99_GOAL_MS
            and r["error_rate"] <= 0.01]
    return max(good, default=0)


def _saturated(by_rate: list[dict], rates: list[int]) -> int | None:
    return by_rate[-1]["rate"] if len(by_rate) < len(rates) else None


# ---- data, models, floor --------------------------------------------------------------------------


def synthetic(seed: int = 0):
    """100k items, 20k users, 30 interactions each: every item at least once, the rest Zipf(0.9)."""
    import pandas as pd

    from recsys_core.data.dataset import build_dataset

    rng = np.random.default_rng(seed)
    rows = SYNTHETIC_USERS * SYNTHETIC_PER_USER
    popularity = 1.0 / np.arange(1, SYNTHETIC_ITEMS + 1) ** 0.9
    items = rng.choice(SYNTHETIC_ITEMS, size=rows, p=popularity / popularity.sum())
    items[rng.permutation(rows)[:SYNTHETIC_ITEMS]] = np.arange(SYNTHETIC_ITEMS)  # the whole catalogue appears
    frame = pd.DataFrame({"user": np.repeat(np.arange(SYNTHETIC_USERS), SYNTHETIC_PER_USER).astype(str),
                          "item": items.astype(str), "timestamp": np.tile(np.arange(SYNTHETIC_PER_USER), SYNTHETIC_USERS)
                          + 1_600_000_000})
    return build_dataset(frame, name="synthetic-100k")


def prepare(ws_root: Path, dataset: str, families: list[str], steps: int) -> tuple[object, str, dict, dict]:
    """The dataset saved in a fresh workspace and each family trained briefly and saved: (ds, name, folders,
    skipped with why)."""
    from recsys_core.data.demo import DEMO_NAME
    from recsys_core.training.experiment import make_model
    from recsys_core.workspace.registry import Workspace

    ws = Workspace(ws_root)
    if dataset == "demo":
        ws.ensure_demo()
        name = DEMO_NAME
    else:
        ws.save_dataset(synthetic(), name=dataset)
        name = dataset
    ds = ws.load_dataset(name)
    folders, skipped = {}, {}
    for family in families:
        model = make_model(family, {"train.max_steps": steps} if family in SEQUENTIAL else None)
        if (refused := model.refusal(ds)) is not None:
            skipped[family] = refused.reason
            continue
        started = time.perf_counter()
        model.fit(ds)
        folders[family] = str(model.save(ws_root / "models" / family))
        print(f"{family}: trained in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return ds, name, folders, skipped


def floor(folder: str, ds, users: list[str], batch: int = 32) -> dict:
    """The same engine call without HTTP, in this process on one thread: per user alone, and per user in a
    batch of `batch` (medians over the users)."""
    import torch

    from recsys_core.models.base import load_model
    from recsys_core.recommend.usecases import Query, recommend_batch, recommend_for

    torch.set_num_threads(1)
    model = load_model(folder)
    queries = [Query.of(user=u, k=10) for u in users]
    for q in queries[:20]:
        recommend_for(model, ds, q)  # warm
    single = []
    for q in queries:
        started = time.perf_counter()
        recommend_for(model, ds, q)
        single.append(time.perf_counter() - started)
    forward = []  # the model's score call alone: what the use case adds is the rest
    for u in users:
        history = ds.history(ds.user_index[u])
        started = time.perf_counter()
        model.score([history])
        forward.append(time.perf_counter() - started)
    batched = []
    for start in range(0, len(queries) - batch + 1, batch):
        started = time.perf_counter()
        recommend_batch(model, ds, queries[start:start + batch])
        batched.append((time.perf_counter() - started) / batch)
    ms = np.asarray(single) * 1000
    return {"single_p50_ms": round(float(np.median(ms)), 3), "single_p99_ms": round(float(np.percentile(ms, 99)), 3),
            "score_only_p50_ms": round(float(np.median(forward)) * 1000, 3),
            "batched_per_user_ms": round(float(np.median(batched)) * 1000, 4), "batch": batch}


# ---- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    rates = [int(r) for r in args.rates.split(",")]
    families = [f for f in args.models.split(",") if f]
    record: dict = {"bench": "serve", "dataset": args.dataset, "date": dt.date.today().isoformat(),
                    "load_avg_before": round(os.getloadavg()[0], 2), "cores": os.cpu_count(), "rates": rates,
                    "duration_s": args.duration, "timeout_s": TIMEOUT_S, "k": 10, "threads_per_worker": 1,
                    "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        ws_root = Path(tmp) / "workspace"
        ds, name, folders, skipped = prepare(ws_root, args.dataset, families, args.train_steps)
        record["n_items"], record["n_users"] = ds.n_items, ds.n_users
        record["skipped"] = skipped
        rng = np.random.default_rng(0)
        users = [str(u) for u in ds.user_ids[rng.choice(ds.n_users, min(2000, ds.n_users), replace=False)]]
        bodies = [{"user": u, "k": 10} for u in users]
        for family, folder in folders.items():
            row: dict = {"floor": floor(folder, ds, users[:400])}
            main = series(ws_root, name, folder, bodies, rates, args.duration)
            row["main"] = main
            print(f"{family}: {json.dumps(main['rates'])}", file=sys.stderr, flush=True)
            if family in SEQUENTIAL or family == "ease":  # batching off, same rates
                row["batch_off"] = series(ws_root, name, folder, bodies, rates, args.duration, batch="off")
            if family in args.workers_models.split(","):
                row["workers_2"] = series(ws_root, name, folder, bodies, rates, args.duration, workers=2)
            record["models"][family] = row
    record["load_avg"] = round(os.getloadavg()[0], 2)
    return summarise(record, rates)


def summarise(record: dict, rates: list[int]) -> dict:
    """The headline keys: max_rps_p99_50ms, p99_ms_at_<rate>rps, http_overhead_p50_ms, batching_gain, rss."""
    record["max_rps_p99_50ms"] = {f: row["main"]["max_rps_p99_50ms"] for f, row in record["models"].items()}
    for rate in rates:
        record[f"p99_ms_at_{rate}rps"] = {f: next((r["p99_ms"] for r in row["main"]["rates"] if r["rate"] == rate),
                                                  "saturated") for f, row in record["models"].items()}
    # HTTP's cost: one kept-alive request at a time against the same call in process; and the open loop's p50 at
    # its lowest rate (its client wakes each request on a timer, so a busy machine adds its jitter) minus the same.
    record["http_overhead_p50_ms"] = {f: round(row["main"]["sequential"]["p50_ms"] - row["floor"]["single_p50_ms"], 3)
                                      for f, row in record["models"].items()}
    record["open_loop_overhead_p50_ms"] = {
        f: round(row["main"]["rates"][0]["p50_ms"] - row["floor"]["single_p50_ms"], 3)
        for f, row in record["models"].items() if row["main"]["rates"][0]["p50_ms"]}
    gains = {}
    for family, row in record["models"].items():
        on, off = row["main"], row.get("batch_off")
        if on is None or off is None:
            continue
        both = [r for r in on["rates"] if r["rate"] in {x["rate"] for x in off["rates"]}]
        last = both[-1]["rate"] if both else None
        p99 = {x["rate"]: x["p99_ms"] for x in off["rates"]}
        gains[family] = {"max_rps_on": on["max_rps_p99_50ms"], "max_rps_off": off["max_rps_p99_50ms"],
                         "ratio": round(on["max_rps_p99_50ms"] / off["max_rps_p99_50ms"], 2)
                         if off["max_rps_p99_50ms"] else None,
                         "highest_common_rate": last, "p99_on_ms": both[-1]["p99_ms"] if both else None,
                         "p99_off_ms": p99.get(last)}
    record["batching_gain"] = gains
    record["workers"] = {f: {"max_rps_1": row["main"]["max_rps_p99_50ms"], "max_rps_2": row["workers_2"]["max_rps_p99_50ms"],
                             "memory_1": row["main"]["memory"], "memory_2": row["workers_2"]["memory"]}
                         for f, row in record["models"].items() if "workers_2" in row}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo", choices=["demo", "synthetic-100k"])
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="requests/s, in order")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per rate")
    parser.add_argument("--train-steps", type=int, default=40, help="training steps of the sequential models")
    parser.add_argument("--workers-models", default="ease,sasrec", help="models also served by 2 workers")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)  # the load generator's process
    args = parser.parse_args()
    if args.loadgen:  # its settings and request bodies come on stdin
        print(json.dumps(loadgen(json.loads(sys.stdin.read()))))
        return
    record = run(args)
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_write:
        out = Path(args.out) if args.out else ROOT / "bench" / "results" / (
            f"serve-{args.dataset}-{dt.date.today():%Y%m%d}.json")
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
