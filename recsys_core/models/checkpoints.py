"""Training checkpoints of the shared loop (safetensors + JSON, never pickle): weights, best weights, Adam moments,
schedule and counters, written crash-safe and read back with their format version checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recsys_core.errors import ModelError
from recsys_core.models.base import shown_path

if TYPE_CHECKING:  # the loop imports this module; a run is its object
    from recsys_core.models.loop import _Run

_CKPT_TENSORS, _CKPT_META = "checkpoint.safetensors", "checkpoint.json"
# Layout of a checkpoint. 0: written before versions were recorded, the layout of 1 (which adds only the
# version); `load_checkpoint` migrates older layouts and refuses newer ones.
CHECKPOINT_FORMAT_VERSION = 1
_FRESH = "delete the checkpoint folder to start training from scratch"


def checkpoint_exists(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / _CKPT_TENSORS).is_file() and (d / _CKPT_META).is_file()


def save_checkpoint(directory: str | Path, run: _Run) -> None:
    """Everything needed to continue exactly: weights, best weights, Adam moments, schedule, counters."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in run.task.module.state_dict().items()}
    if run.stopper.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in run.stopper.best_state.items()})
    opt = run.optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": run.epoch, "step": run.step, "batch_size": run.batch_size, "train_seconds": run.train_seconds,
        "cpu_seconds": run.cpu_seconds,
        "history": run.history, "param_groups": opt["param_groups"], "scheduler": run.scheduler.state_dict(),
        "stopper": {"best": run.stopper.best, "best_epoch": run.stopper.best_epoch, "bad": run.stopper.bad},
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # Write then rename, so a crash mid-save never leaves a torn checkpoint behind.
    save_file(tensors, str(d / (_CKPT_TENSORS + ".tmp")))
    (d / (_CKPT_META + ".tmp")).write_text(json.dumps(meta, default=_json_default))
    os.replace(d / (_CKPT_TENSORS + ".tmp"), d / _CKPT_TENSORS)
    os.replace(d / (_CKPT_META + ".tmp"), d / _CKPT_META)


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_checkpoint(directory: str | Path, run: _Run) -> None:
    """Restore `run` from a checkpoint of this version or an older one; anything else is a ModelError."""
    d = Path(directory)
    meta = _checkpoint_meta(d / _CKPT_META)
    try:
        tensors = load_file(str(d / _CKPT_TENSORS))
    except (OSError, SafetensorError) as err:
        raise ModelError(f"checkpoint is unreadable ({(err.strerror or type(err).__name__) if isinstance(err, OSError) else err})",
                         file=shown_path(d / _CKPT_TENSORS), hint=_FRESH) from err
    try:
        run.task.module.load_state_dict(_strip(tensors, "model."))
    except RuntimeError as err:
        raise ModelError("checkpoint does not match this model (different catalogue or sizes)", file=shown_path(d),
                        hint="delete the checkpoint folder or set resume=False") from err
    try:
        _restore(run, meta, tensors)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise ModelError(f"checkpoint is damaged or belongs to another run ({type(err).__name__}: {str(err)[:200]})",
                         file=shown_path(d / _CKPT_META), hint=_FRESH) from err


def _checkpoint_meta(path: Path) -> dict:
    """checkpoint.json, checked against `CHECKPOINT_FORMAT_VERSION` (version 0 has the layout of 1: as is)."""
    try:
        meta = json.loads(path.read_text())
    except OSError as err:
        raise ModelError(f"checkpoint is unreadable ({err.strerror or type(err).__name__})", file=shown_path(path), hint=_FRESH) from err
    except (ValueError, RecursionError) as err:
        raise ModelError(f"checkpoint is unreadable ({str(err)[:200]})", file=shown_path(path), hint=_FRESH) from err
    version = meta.get("format_version", 0) if isinstance(meta, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ModelError(f"checkpoint.json is damaged (format_version {version!r})", file=shown_path(path), hint=_FRESH)
    if version > CHECKPOINT_FORMAT_VERSION:
        raise ModelError(f"this checkpoint was written by a newer version of RecSys Explorer (format {version}; "
                         f"this version reads up to {CHECKPOINT_FORMAT_VERSION})", file=shown_path(path),
                         hint=f"upgrade RecSys Explorer to resume it, or {_FRESH}")
    return meta


def _restore(run: _Run, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Everything but the module's weights: best weights, early stopping, optimizer, schedule, counters."""
    epoch, step, batch_size = meta["epoch"], meta["step"], meta["batch_size"]
    if not all(isinstance(n, int) and n >= low for n, low in ((epoch, 0), (step, 0), (batch_size, 1))):
        raise ValueError(f"epoch {epoch!r}, step {step!r}, batch_size {batch_size!r} are not counts")  # the loop divides
    best = _strip(tensors, "best.")
    run.stopper.best_state = best or None
    run.stopper.best, run.stopper.best_epoch, run.stopper.bad = (meta["stopper"][k] for k in ("best", "best_epoch",
                                                                                              "bad"))
    state: dict[int, dict] = {}
    for key, value in _strip(tensors, "opt.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    run.optimizer.load_state_dict({"state": state, "param_groups": groups})
    run.scheduler.load_state_dict(meta["scheduler"])
    if run.scaler is not None and meta.get("scaler"):
        run.scaler.load_state_dict(meta["scaler"])
    run.epoch, run.step, run.batch_size = epoch, step, batch_size
    run.train_seconds, run.history = meta["train_seconds"], meta["history"]
    run.cpu_seconds = meta.get("cpu_seconds", 0.0)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
