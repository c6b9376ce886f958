"""The PM's demo path on the demo dataset, timed as a visitor meets it, from a cold server process.

    python bench/demo.py                    # every stage; about 10 minutes on an idle 2-core CPU
    python bench/demo.py --busy 6           # the loaded global view beside 6 busy processes (default 6)
    python bench/demo.py --stages first_paint,ease,cancel

Stages (each key of the JSON says which):
- `first_paint_s`: `streamlit run` started cold on a fresh workspace until a real Chromium shows the home
  page; `fresh_tab_recommend_s`: a new tab opening the Recommend page until its top-K table is drawn.
- `ease`, `bert4rec`, `sasrec`: training jobs exactly as the Train page starts them (a process each, the
  CPU demo profile), timed from the click to the recorded run: `train_s`, `ndcg@10`, `stop_reason`.
- `cancel_latency_s`: a running BERT4Rec job, from the Cancel request to its `cancelled` row.
- `global_view_100_s` (idle) and `global_view_100_loaded_s` (beside `--busy` spinning processes): the
  Explain page's global view for 100 users with EASE, as the workspace job the page starts.
- `umap_2d_s`: the Embeddings page's UMAP map of the active model's items, as its workspace job.
- `first_blurb_cold_s` / `first_blurb_warm_s`: bench/blurbs.py in a fresh process (converted model copy
  present), first blurb and the median of the next ones.
The load average is sampled at every stage; read times against it. JSON to bench/results/demo-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from recsys_core.data.demo import DEMO_NAME
from recsys_core.threads import cores
from recsys_core.training.jobs import TrainingJob
from recsys_core.workspace.jobs import JobStore
from recsys_core.workspace.registry import Workspace

STAGES = ("first_paint", "ease", "bert4rec", "sasrec", "cancel", "global_view", "umap", "blurbs")


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ---- the browser ----------------------------------------------------------------------------------


def first_paint(root: Path) -> dict:
    """Cold server start to a painted home page, then a fresh tab on the Recommend page."""
    from e2e_util import CHROMIUM_ARGS, chromium_path, streamlit_server
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    with streamlit_server(root, root.parent / "streamlit.log", timeout_s=180) as url, sync_playwright() as p:
        server_ready = time.perf_counter() - started
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Active dataset").first.wait_for(timeout=300_000)
        painted = time.perf_counter() - started
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        tab.goto(f"{url}/recommend")
        tab.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=600_000)
        fresh_tab = time.perf_counter() - t0
        browser.close()
    return {"first_paint_s": round(painted, 2), "server_ready_s": round(server_ready, 2),
            "fresh_tab_recommend_s": round(fresh_tab, 2), "load_avg": load()}


# ---- training jobs ----------------------------------------------------------------------------------


def demo_overrides(family: str) -> dict:
    """The Train page's CPU demo profile for `family` (what a PM gets without touching a field)."""
    from recsys_core.models.profiles import profile_for

    return profile_for("cpu").overrides(family)


def train(store: JobStore, family: str) -> dict:
    t0 = time.perf_counter()
    job = TrainingJob.start(store, DEMO_NAME, family, demo_overrides(family))
    job.join()
    rec = job.record()
    result = rec.result or {}
    return {"train_s": round(time.perf_counter() - t0, 2), "status": rec.status,
            "ndcg@10": (result.get("metrics") or {}).get("ndcg@10"), "stop_reason": result.get("stop_reason"),
            "cpu_s": result.get("cpu_s"), "overrides": demo_overrides(family), "load_avg": load()}


def cancel_latency(store: JobStore) -> dict:
    """From the Cancel request on a running BERT4Rec job (past its first steps) to its `cancelled` row."""
    job = TrainingJob.start(store, DEMO_NAME, "bert4rec", demo_overrides("bert4rec"))
    while job.record().step < 5 and job.running:
        time.sleep(0.05)
    t0 = time.perf_counter()
    job.cancel()
    job.join()
    return {"cancel_latency_s": round(time.perf_counter() - t0, 2), "status": job.record().status,
            "load_avg": load()}


# ---- busy neighbours ------------------------------------------------------------------------------------


@contextmanager
def busy(n: int):
    """`n` processes spinning on a core each: other sessions' work beside a click."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(2)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--busy", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")

    out: dict = {"dataset": DEMO_NAME, "cores": cores(), "device": "cpu", "load_avg_start": load(),
                 "date": dt.date.today().isoformat()}
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as tmp:
        root = Path(tmp) / "workspace"
        ws = Workspace(root)
        ws.ensure_demo()
        store = JobStore(ws)
        if "first_paint" in stages:
            out.update(first_paint(root))
        for family in ("ease", "bert4rec", "sasrec"):
            if family in stages:
                out[family] = train(store, family)
                print(json.dumps({family: out[family]}), flush=True)
        if "cancel" in stages:
            out["cancel"] = cancel_latency(store)
            out["cancel_latency_s"] = out["cancel"]["cancel_latency_s"]
        extra_stages(stages, ws, store, out, args.busy)
    out["load_avg"] = load()
    text = json.dumps(out, indent=2)
    print(text)
    path = Path(args.out or ROOT / "bench" / "results" / f"demo-{dt.date.today():%Y%m%d}.json")
    path.write_text(text + "\n")


def extra_stages(stages: list[str], ws: Workspace, store: JobStore, out: dict, n_busy: int) -> None:
    """The Explain page's global view, the Embeddings page's UMAP and the Blurbs page's first blurb."""
    from recsys_core.threads import interactive_threads, use_threads

    use_threads(interactive_threads())  # what the server gives a click (recsys_core/threads.py)
    model = None
    if {"global_view", "umap"} & set(stages):
        model = ease_model(ws)
    if "global_view" in stages:
        out["global_view"] = global_view(store, ws, model)
        out["global_view_100_s"] = out["global_view"]["s"]
        with busy(n_busy):
            out["global_view_loaded"] = {**global_view(store, ws, model), "busy_processes": n_busy}
        out["global_view_100_loaded_s"] = out["global_view_loaded"]["s"]
    if "umap" in stages:
        out["umap"] = umap_2d(store, model)
        out["umap_2d_s"] = out["umap"]["s"]
    if "blurbs" in stages:
        out["blurbs"] = first_blurbs()
        out["first_blurb_cold_s"] = out["blurbs"].get("first_blurb_cold_s")
        out["first_blurb_warm_s"] = out["blurbs"].get("first_blurb_warm_s")


def ease_model(ws: Workspace):
    """The model a PM explains after the EASE step (trained here in a second: the stage may run alone)."""
    from recsys_core.training.experiment import run_experiment

    return run_experiment(ws.load_dataset(DEMO_NAME), "ease", workspace=ws, dataset_name=DEMO_NAME).model


def _timed_job(store: JobStore, kind: str, work) -> dict:
    """Run `work` as the workspace job a page starts; wall and CPU seconds from start to the recorded end."""
    from recsys_core.background import WorkspaceJob

    t0, c0 = time.perf_counter(), time.process_time()
    job = WorkspaceJob.start(store, kind, DEMO_NAME, work, title=f"bench {kind}")
    job.join()
    return {"s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
            "status": job.record().status, "load_avg": load()}


def global_view(store: JobStore, ws: Workspace, model, n_users: int = 100) -> dict:
    """The Explain page's global view of 100 sampled users (same sample and settings as the page)."""
    import numpy as np

    from recsys_core.insight import explain

    ds = ws.load_dataset(DEMO_NAME)
    explainer = explain.Explainer(model, ds)
    sample = np.sort(np.random.default_rng(0).choice(ds.n_users, n_users, replace=False))
    histories = [ds.history(int(u)) for u in sample]

    def work(progress):
        return {"frame": explainer.global_view(histories, progress=progress, max_evals=500)}

    return {**_timed_job(store, "global_view", work), "users": n_users}


def umap_2d(store: JobStore, model) -> dict:
    """The Embeddings page's default UMAP of the model's item vectors (a fresh process compiles numba first,
    as the server's warm-up does; that compile is timed apart)."""
    import numpy as np

    from recsys_core.insight import project

    t0 = time.perf_counter()
    project.project(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), method="umap",
                    n_neighbors=5, n_epochs=20, use_cache=False)
    compile_s = time.perf_counter() - t0
    vectors = model.item_embeddings()
    work = project.projection_work(vectors, project.ProjectionParams(method="umap", dims=2))
    return {**_timed_job(store, "projection", work), "points": len(vectors),
            "compile_s_at_warmup": round(compile_s, 2)}


def first_blurbs() -> dict:
    """bench/blurbs.py in a fresh process: the cold first blurb (converted copy present) and warm ones."""
    with tempfile.TemporaryDirectory(prefix="demo-blurbs-") as tmp:
        target = Path(tmp) / "blurbs.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "blurbs.py"), "--n", "5", "--baseline-n", "0",
                        "--out", str(target)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        found = json.loads(target.read_text())
    keys = ("first_blurb_cold_s", "first_blurb_warm_s", "median_blurb_s", "grounded_rate", "load_average_after")
    return {k: found.get(k) for k in keys}


if __name__ == "__main__":
    main()
