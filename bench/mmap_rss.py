"""Memory of one saved model loaded by several processes at once (the API's workers): copying against mapping.

Two models are saved in a temporary folder: EASE on a catalogue of 8,192 items (its item x item B, float32, is
256 MiB; the weights are random, since only their bytes matter here and a fit would hold three such matrices in
float64) and SASRec+ on the 100k-item catalogue of `bench/serve.py` (trained for a few steps). Each is then loaded
by `--processes` processes started together, two ways:

- `copy`: each process reads its own copy of the tensors (`safetensors.numpy.load_file`, then into the model),
  which is what every load did before format 3 (EASE copied B into its column blocks, the transformers copied
  their state into the module): the old path, kept callable here by swapping `base.map_tensors` in the child;
- `map`: `load_model` as it is, the tensors mapped from the file copy-on-write (`np.memmap` mode "c").

Each process loads, then scores one history of every item (so every page of the weights is touched, as a
serving process soon does), reports its RSS and PSS after import, after the load and after scoring, and waits;
once all are waiting the parent reads each one's /proc/PID/smaps_rollup, so PSS (shared pages counted once, split
among the processes that map them) is measured with all of them alive. Before each reading a process hands the
memory it freed back to the system (`malloc_trim`), so a reading is what the process holds, not what malloc
kept (without it, SASRec+'s readings varied by 40 MB between identical processes). `anon_growth_mb_each` is what
the model costs a process privately (anonymous PSS, all alive, minus after import): the figure that mapping
should shrink; `pss_mb_total` is the machine's cost of all the processes together.

    python bench/mmap_rss.py                       # JSON to bench/results/mmap-rss-<YYYYMMDD>.json
    python bench/mmap_rss.py --ease-items 2048 --sasrec-items 20000 --no-write   # a quick look
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import numpy as np

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty")


def smaps(pid: int | str = "self") -> dict[str, float]:
    """The memory of a process from /proc/PID/smaps_rollup, in MiB (kernel kB / 1024)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[name.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
    return out


# ---- the child: load, touch, report, wait --------------------------------------------------------------------


def trimmed() -> dict[str, float]:
    """`smaps()` after freed memory went back to the system (glibc's malloc keeps freed blocks otherwise)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return smaps()


def child(mode: str, folder: str) -> None:
    import torch

    from recsys_core.models import base

    torch.set_num_threads(1)
    if mode == "copy":
        from safetensors.numpy import load_file

        # the old path: the file's bytes read into this process (private), then handed to the model
        base.map_tensors = lambda path: {k: torch.from_numpy(v.copy()) for k, v in load_file(str(path)).items()}
    report = {"pid": os.getpid(), "imported": trimmed()}
    started = time.perf_counter()
    model = base.load_model(folder)
    report["load_s"] = round(time.perf_counter() - started, 2)
    report["loaded"] = trimmed()
    model.score([np.arange(model.n_items_)])  # touches every weight, as serving soon does
    report["scored"] = trimmed()
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # the parent reads everyone's memory, then lets go


def together(folder: str, mode: str, processes: int) -> dict:
    """`processes` children loading `folder` at once; each one's own report and its memory with all alive."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", mode, folder], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        reports = []
        for proc in procs:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a {mode} child exited with {proc.wait()}")
            reports.append(json.loads(line))
        for proc, report in zip(procs, reports, strict=True):
            report["all_alive"] = smaps(proc.pid)
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)
    alive = [r["all_alive"] for r in reports]
    return {"processes": reports,
            "rss_mb_each": [a["rss_mb"] for a in alive], "pss_mb_each": [a["pss_mb"] for a in alive],
            "pss_mb_total": round(sum(a["pss_mb"] for a in alive), 1),
            "anon_growth_mb_each": [round(r["all_alive"]["pss_anon_mb"] - r["imported"]["pss_anon_mb"], 1)
                                    for r in reports],
            "load_growth_rss_mb_each": [round(r["loaded"]["rss_mb"] - r["imported"]["rss_mb"], 1) for r in reports]}


# ---- the models ----------------------------------------------------------------------------------------------


def save_ease(n_items: int, folder: Path) -> Path:
    """EASE with random weights over `n_items` items (a fit would need 3 n^2 float64 matrices; only bytes matter)."""
    import torch

    from recsys_core.models.ease import EASE

    model = EASE()
    model.n_items_, model.item_ids_ = n_items, [f"item{i}" for i in range(n_items)]
    weights = torch.randn(n_items, n_items, generator=torch.Generator().manual_seed(0))
    model.load_state_tensors({"B": weights})
    del weights
    return model.save(folder)


def save_sasrec(n_items: int, steps: int, folder: Path) -> Path:
    import serve  # bench/serve.py: its generated catalogue

    from recsys_core.training.experiment import make_model

    serve.SYNTHETIC_ITEMS = n_items
    model = make_model("sasrec", {"train.max_steps": steps})
    return model.fit(serve.synthetic()).save(folder)


def run(args: argparse.Namespace) -> dict:
    import safetensors
    import torch

    record = {"date": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M}Z", "processes": args.processes,
              "load_avg_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "torch": torch.__version__, "safetensors": safetensors.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        builders = {"ease": (args.ease_items, lambda f: save_ease(args.ease_items, f)),
                    "sasrec": (args.sasrec_items, lambda f: save_sasrec(args.sasrec_items, args.train_steps, f))}
        for family in args.models.split(","):
            items, build = builders[family]
            started = time.perf_counter()
            folder = build(Path(tmp) / family)
            print(f"{family}: saved in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            row = {"items": items, "file_mb": round((folder / "model.safetensors").stat().st_size / 2**20, 1)}
            for mode in ("copy", "map"):
                row[mode] = together(str(folder), mode, args.processes)
                print(f"{family} {mode}: PSS each {row[mode]['pss_mb_each']} MB, RSS each {row[mode]['rss_mb_each']}",
                      file=sys.stderr, flush=True)
            row["pss_saved_mb"] = round(row["copy"]["pss_mb_total"] - row["map"]["pss_mb_total"], 1)
            record["models"][family] = row
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ease,sasrec")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--ease-items", type=int, default=8192)
    parser.add_argument("--sasrec-items", type=int, default=100_000)
    parser.add_argument("--train-steps", type=int, default=5, help="SASRec+'s training steps (weights need not be good)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    text = json.dumps(run(args), indent=2)
    print(text)
    if not args.no_write:
        out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"mmap-rss-{dt.date.today():%Y%m%d}.json"
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
