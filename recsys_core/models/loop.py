"""The training loop shared by every neural model: device, mixed precision, memory planning,
optimizer + schedule, early stopping on validation NDCG, checkpoint/resume (`checkpoints.py`), progress and cancel.

A model plugs in through `TrainTask` (its module, its batches, its loss, its validation); the loop
knows nothing about sequences or text, so BERT4Rec, SASRec, the text tower and the hybrid share it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import psutil
import torch
from torch import nn

from recsys_core.data.splits import EvalSet
from recsys_core.errors import ConfigError, ResourceError
from recsys_core.models import distributed
from recsys_core.models.checkpoints import checkpoint_exists, load_checkpoint, save_checkpoint
from recsys_core.models.settings import TrainConfig
from recsys_core.progress import Progress

# ---- device and precision ----------------------------------------------------------------------


def pick_device(device: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for "auto"; an explicit choice that is unavailable is an error."""
    choice = (device or "auto").lower()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "auto":
        if torch.cuda.is_available():
            # under torchrun each process owns the GPU of its local rank
            return torch.device("cuda", distributed.local_rank()) if distributed.world() > 1 else torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but this machine has no usable CUDA GPU", setting="train.device",
                        hint='use device="auto" or "cpu"')
    if choice == "mps" and not mps_ok:
        raise ConfigError("device='mps' but Apple MPS is not available here", setting="train.device",
                        hint='use device="auto" or "cpu"')
    if choice not in ("cpu", "mps") and not choice.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}", setting="train.device", hint='one of "auto", "cpu", "cuda", "mps"')
    if choice == "cuda" and distributed.world() > 1:
        return torch.device("cuda", distributed.local_rank())
    return torch.device(choice)


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs: ~free speed, precision loss irrelevant for recommendation."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (needs a GradScaler); None (fp32) on CPU/MPS, where
    autocast is slower or patchy for these small models."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# torch's process-wide generator is the only one parameter init and dropout can draw from, so it is one
# resource: a seeded piece of work holds it to the end. Two runs in one process (two sessions in the
# Streamlit server) then take turns instead of interleaving their draws and changing each other's models.
_GENERATOR_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """torch seeded for one piece of work, inside a fork of the process-wide generator that is restored
    afterwards, so a run neither depends on nor changes what other code in the process draws. A run holds
    the generator while it draws (`_GENERATOR_LOCK`, reentrant for the loop's per-epoch reseeding), so runs
    in other threads wait rather than draw between its draws. NumPy draws all go through
    `np.random.default_rng(seed)` Generators."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with _GENERATOR_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch), so a resumed run replays exactly what an unbroken run does."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ---- memory planning -----------------------------------------------------------------------------


def estimate_memory(n_items: int, max_len: int, hidden: int, batch: int, layers: int, heads: int = 2,
                    output_positions: float | None = None) -> int:
    """Rough peak bytes of one fp32 training step of a transformer over item sequences.

    `output_positions` is how many positions per sequence get full-catalogue logits (all of them
    when None; BERT4Rec computes them only at masked positions). Parameters count four times
    (weights, gradients, two Adam moments).
    """
    positions = batch * max_len
    params = (n_items + 2 + max_len) * hidden + layers * (12 * hidden * hidden + 13 * hidden) + hidden * hidden
    per_layer = positions * (16 * hidden + 8 * hidden) + 3 * batch * heads * max_len * max_len
    out_rows = batch * (max_len if output_positions is None else output_positions)
    logits = 3 * out_rows * n_items  # logits, softmax, gradient
    return int(4 * (4 * params + layers * per_layer + logits + 4 * positions * hidden))


def available_memory(device: torch.device) -> int:
    """Bytes a training run may use on `device` (free GPU memory, or available RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def plan_batch_size(batch: int, need: callable, device: torch.device, knobs: dict,
                    available: int | None = None, progress: Progress | None = None) -> int:
    """Largest batch <= `batch` (halving) whose `need(batch)` bytes fit; DataError naming the knobs
    to turn when even batch 1 does not fit."""
    budget = int(0.85 * (available if available is not None else available_memory(device)))
    size = batch
    while size > 1 and need(size) > budget:
        size //= 2
    if need(size) > budget:
        now = ", ".join(f"{k}={v}" for k, v in knobs.items())
        raise ResourceError(
            f"training needs about {need(size) / 2**30:.1f} GiB even with batch_size=1, but only "
            f"{budget / 2**30:.1f} GiB is available on {device.type}",
            hint=f"lower hidden or max_len (now {now}), use loss='sampled' for a large catalogue, "
                 "or train on a bigger GPU",
        )
    if size < batch and progress is not None:
        progress.update(0, 0, message=f"batch_size {batch} does not fit in memory; using {size}")
    return size


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# ---- optimisation ------------------------------------------------------------------------------


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, beta2: float = 0.999) -> torch.optim.AdamW:
    """AdamW with no decay on biases and LayerNorm weights (decaying them only hurts)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))


class WarmupLinear:
    """Learning-rate factor: linear warm-up to 1, then linear decay to `floor` at `total_steps`.

    A callable object (not a closure) so LambdaLR checkpoints its fields, and `total_steps` can be
    re-planned once the length of an epoch is known under a time budget."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float = 0.05) -> None:
        self.warmup_steps = max(1, int(warmup_steps))
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.floor = floor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        done = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return max(self.floor, 1.0 - (1.0 - self.floor) * done)


def warmup_linear(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  floor: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then linear decay to `floor` x base lr at `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinear(warmup_steps, total_steps, floor))


@dataclass
class EarlyStopping:
    """Keeps the best weights (a CPU copy) and counts evaluations without improvement."""

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, value: float, epoch: int, module: nn.Module) -> bool:
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def restore(self, module: nn.Module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


# ---- the loop ----------------------------------------------------------------------------------


class TrainTask(Protocol):
    """What a model gives the loop. Batches are arrays of example indices so the loop can split
    one in two when the GPU runs out of memory, or share one among the processes of a torchrun.

    Under torchrun, `valid` (the users `validate` scores) is split among the processes, and `loss` gets
    `rows`, this process's slice of the global `batch`: it returns those rows' terms summed over the
    whole batch's number of terms (so the processes' parts add up to the one-process mean loss), with
    any random draws made for the whole batch first (so each process draws what one process would)."""

    module: nn.Module
    valid: EvalSet | None

    def n_batches(self, batch_size: int) -> int: ...

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]: ...

    def loss(self, batch: np.ndarray, rng: np.random.Generator, rows: slice = slice(None)) -> torch.Tensor: ...

    def validate(self, progress: Progress | None = None) -> dict[str, float]: ...


# Stop reasons that are a limit the run reached (not convergence, not a Cancel).
LIMITS = ("epochs", "max_steps", "cpu_budget")


@dataclass
class LoopResult:
    history: list[dict]
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped: str  # "epochs", "max_steps", "early_stop", "cpu_budget", "cancelled"
    batch_size: int
    steps: int
    train_seconds: float  # wall-clock, validation included
    cpu_seconds: float  # process CPU time (all threads), validation included: what the budget counts
    improved: bool | None  # did validation ever beat its first check? None: validated fewer than twice


class _Run:
    """Mutable state of one training run (what a checkpoint holds)."""

    def __init__(self, task: TrainTask, cfg: TrainConfig, device: torch.device, log_every: int, metric: str,
                 schedule_steps: int = 0) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.log_every, self.metric = log_every, metric
        self.batch_size = cfg.batch_size
        # Under torchrun: every process must cut the same batches, so the smallest planned size wins.
        self.ddp = distributed.wrap(task.module, task.loss, device) if distributed.world() > 1 else None
        if self.ddp is not None:
            self.batch_size = distributed.min_over_ranks(self.batch_size)
        self.optimizer = make_optimizer(task.module, cfg.lr, cfg.weight_decay, cfg.adam_beta2)
        total = schedule_steps or planned_steps(cfg, task.n_batches(self.batch_size))
        self.scheduler = warmup_linear(self.optimizer, int(cfg.warmup_frac * total), total, cfg.lr_floor)
        self.dtype = amp_dtype(device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.stopper = EarlyStopping(cfg.patience)
        self.epoch = 0  # next epoch to run
        self.step = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.cpu_seconds = 0.0
        self.epoch_cpu0 = cpu_time()  # CPU clock at the start of the epoch that runs

    def tick(self, started: tuple[float, float]) -> None:
        """Add the wall and CPU time since `started` (a `clock()` reading)."""
        wall, cpu = clock()
        self.train_seconds += wall - started[0]
        self.cpu_seconds += cpu - started[1]

    def total_steps(self) -> int:
        """The step the run ends at unless early stopping ends it sooner, as far as is known now: the epochs or
        the step cap, or, under a CPU budget, the end of the epoch in which the budget runs out at the CPU per
        step so far (validation included). Re-planned at every progress report, so a progress bar's 100 % is
        the run's actual limit."""
        per_epoch = self.task.n_batches(self.batch_size)
        total = planned_steps(self.cfg, per_epoch)
        if self.cfg.cpu_budget_s and self.step > 0:
            spent = self.cpu_seconds + cpu_time() - self.epoch_cpu0
            budget_steps = self.cfg.cpu_budget_s / max(spent / self.step, 1e-9)
            # The budget is checked at an epoch's end, so the run never stops before the current epoch ends,
            # however slow its last steps were on a busy machine (the estimate then falls behind `step`).
            epochs = max(1, math.ceil(budget_steps / per_epoch), math.ceil(self.step / per_epoch))
            total = min(total, epochs * per_epoch)
        return max(total, self.step)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of a run that neither early stopping nor a CPU budget ends: the epochs, or the step cap."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps > 0 else total


_CLOCK = threading.local()


def cpu_time() -> float:
    """The CPU seconds a run is charged: the whole process over all its threads (a training job owns its process),
    or, inside `thread_cpu_clock()`, the calling thread only."""
    return getattr(_CLOCK, "read", time.process_time)()


@contextlib.contextmanager
def thread_cpu_clock() -> Iterator[None]:
    """Charge runs on this thread with this thread's CPU time: a probe in the shared server must not count the
    other sessions' work (the LLM warm-up's conversion beside an estimate made its steps look 6x dearer: 94 ms
    against 16 ms alone). Only with one intra-op thread (`use_threads(1)`, the server's default), where torch
    computes on the calling thread; with more, their work is the process's, and the process clock stays."""
    if torch.get_num_threads() != 1:
        yield
        return
    _CLOCK.read = time.thread_time
    try:
        yield
    finally:
        del _CLOCK.read


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds charged: `cpu_time`)."""
    return time.perf_counter(), cpu_time()


def train(task: TrainTask, cfg: TrainConfig, device: torch.device, progress: Progress | None = None, *,
          log_every: int = 5, metric: str = "ndcg@10", schedule_steps: int = 0) -> LoopResult:
    """Run epochs until done, out of steps, early-stopped, out of time or cancelled; the module ends holding
    the best validated weights (or the latest ones when nothing was validated). `cfg.device` is the model's
    business: the loop trains on `device`. Progress is reported every `log_every` steps. `schedule_steps`
    stretches the learning-rate decay over that many steps instead of the run's own plan (a refit stops
    early on a schedule planned for the whole run)."""
    progress = progress or Progress()
    configure_backends(device)
    with seeded(cfg.seed, device):  # each epoch reseeds inside, so a resumed run replays an unbroken one
        return _train(task, cfg, device, progress, _Run(task, cfg, device, log_every, metric, schedule_steps))


def _train(task: TrainTask, cfg: TrainConfig, device: torch.device, progress: Progress, run: _Run) -> LoopResult:
    if cfg.checkpoint_dir and cfg.resume and checkpoint_exists(cfg.checkpoint_dir):
        load_checkpoint(cfg.checkpoint_dir, run)
        progress.update(run.step, 0, epoch=run.epoch, message=f"resumed from checkpoint at epoch {run.epoch}")
    stopped = "epochs"
    while run.epoch < cfg.epochs:
        started = clock()
        run.epoch_cpu0 = started[1]
        loss = _train_epoch(run, progress)
        if loss is None:
            run.tick(started)
            stopped = "cancelled"
            break
        stopped = _end_of_epoch(run, loss, progress, started) or stopped
        if stopped != "epochs":
            break
    if stopped in LIMITS:
        run.epoch_cpu0 = cpu_time()
        # The run reached its limit: the bar ends at 100 % of the steps it made, whatever the plan said.
        progress.update(run.step, run.step, epoch=run.epoch, message=f"stopped: {stopped.replace('_', ' ')}")
        if run.history and "metrics" not in run.history[-1]:
            # The last weights were never validated (eval_every > 1), so they never competed.
            _validate(run, progress, run.step, loss=run.history[-1]["loss"])
    run.stopper.restore(task.module)
    distributed.check_in_sync(task.module)
    return LoopResult(run.history, run.stopper.best, run.stopper.best_epoch, run.epoch, stopped,
                      run.batch_size, run.step, run.train_seconds, run.cpu_seconds, _improved(run))


def _improved(run: _Run) -> bool | None:
    """Whether the best validation beat the first one: a run that never did learned nothing it could show."""
    checks = [h["metrics"][run.metric] for h in run.history if run.metric in h.get("metrics", {})]
    return None if len(checks) < 2 else max(checks[1:]) > checks[0]


def _train_epoch(run: _Run, progress: Progress) -> float | None:
    """One pass; returns the mean loss, or None when cancelled. Seeded per epoch (dropout draws from torch's
    generator, inside a fork `seeded` restores), so a resumed run replays exactly what an unbroken run does."""
    seed = epoch_seed(run.cfg.seed, run.epoch)
    with seeded(seed, run.device):
        return _epoch_steps(run, progress, np.random.default_rng(seed))


def _epoch_steps(run: _Run, progress: Progress, rng: np.random.Generator) -> float | None:
    run.task.module.train()
    queue = deque(run.task.epoch_batches(run.batch_size, rng))
    losses: list[float] = []
    while queue:
        if progress.cancelled:
            return None
        if run.cfg.max_steps > 0 and run.step >= run.cfg.max_steps:
            break
        batch = queue.popleft()
        try:
            losses.append(_step(run, batch, rng))
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if is_oom(err) and run.ddp is not None:
                # One process halving alone would leave the others waiting for it forever: stop, and say how.
                raise ResourceError(
                    f"process {distributed.rank()} of {distributed.world()} ran out of {run.device.type} memory at "
                    f"batch size {run.batch_size}",
                    hint=f"restart torchrun with a smaller global batch, e.g. --set batch_size={max(1, run.batch_size // 2)} "
                         "(one process halves it by itself; processes under torchrun cannot)") from err
            if not is_oom(err) or len(batch) <= 1:
                raise
            _back_off(run, batch, queue, progress)
            continue
        run.step += 1
        if run.step % run.log_every == 0 or not queue:
            progress.update(run.step, run.total_steps(), epoch=run.epoch + 1, loss=float(np.mean(losses[-20:])))
    return float(np.mean(losses)) if losses else float("nan")


def _step(run: _Run, batch: np.ndarray, rng: np.random.Generator) -> float:
    optimizer = run.optimizer
    optimizer.zero_grad(set_to_none=True)
    reported = None
    with autocast(run.device, run.dtype):
        if run.ddp is None:
            loss = run.task.loss(batch, rng)
        else:
            loss, reported = _share_of_loss(run, batch, rng)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(optimizer)
    else:
        loss.backward()
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.task.module.parameters(), run.cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(optimizer)
        run.scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    return float(loss.detach()) if reported is None else reported


def _share_of_loss(run: _Run, batch: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """This process's part of the global batch's mean loss (see `TrainTask.loss`), scaled so that DDP's
    average of the gradients is the gradient of that mean; and the mean itself, for the record.

    Every process draws from the same `rng` for the whole batch, so the draws are the ones one process
    would make. A process whose slice is empty (a batch smaller than the world) computes rank 0's rows
    with weight 0: its generator advances as the others' do, and it joins any collective the loss makes
    (the text tower gathers docs)."""
    cuts = distributed.shards(len(batch))
    mine = cuts[distributed.rank()]
    empty = mine.stop == mine.start
    part = run.ddp(batch, rng, cuts[0] if empty else mine) * (0.0 if empty else 1.0)
    (mean,) = distributed.sum_over_ranks([float(part.detach())])
    return part * distributed.world(), mean


def _back_off(run: _Run, batch: np.ndarray, queue: deque, progress: Progress) -> None:
    """Out of GPU memory: halve the batch size, requeue the failed batch in pieces, go on.

    Batches cut before an earlier halving are only re-cut to the current size."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    halve = len(batch) <= run.batch_size
    if halve:
        run.batch_size = max(1, len(batch) // 2)
    pieces = [batch[i:i + run.batch_size] for i in range(0, len(batch), run.batch_size)]
    queue.extendleft(reversed(pieces))
    if halve:
        progress.update(run.step, 0, epoch=run.epoch + 1,
                        message=f"out of {run.device.type} memory: batch_size halved to {run.batch_size}")


def _end_of_epoch(run: _Run, loss: float, progress: Progress, started: tuple[float, float]) -> str | None:
    """Validate, checkpoint and decide whether to stop. The budget counts CPU seconds, validation included,
    so the same budget buys the same training on an idle or a busy machine."""
    run.epoch += 1
    cfg = run.cfg
    run.history.append({"epoch": run.epoch, "loss": loss, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"]})
    if run.epoch % max(1, cfg.eval_every) == 0 or run.epoch == cfg.epochs:
        before = cpu_time()
        _validate(run, progress, run.total_steps(), loss)
        run.history[-1]["validation_cpu_seconds"] = round(cpu_time() - before, 3)  # its share, for the record
    run.tick(started)
    if run.ddp is not None:  # budget decisions and the schedule follow rank 0's clock, identically everywhere
        run.train_seconds, run.cpu_seconds = distributed.from_main([run.train_seconds, run.cpu_seconds])
    run.history[-1]["train_seconds"] = round(run.train_seconds, 3)
    run.history[-1]["cpu_seconds"] = round(run.cpu_seconds, 3)
    if cfg.cpu_budget_s:
        _fit_schedule_to_budget(run)
    if cfg.checkpoint_dir:
        if distributed.is_main():
            save_checkpoint(cfg.checkpoint_dir, run)
        distributed.barrier()  # no process runs ahead of (or resumes from) a half-written checkpoint
    if run.stopper.should_stop:
        return "early_stop"
    if cfg.max_steps > 0 and run.step >= cfg.max_steps:
        return "max_steps"
    if cfg.cpu_budget_s and run.cpu_seconds >= cfg.cpu_budget_s:
        return "cpu_budget"
    return None


def _fit_schedule_to_budget(run: _Run) -> None:
    """Under a CPU budget, aim the decay at the step where the budget should run out, re-estimated
    after every epoch from the CPU time per step so far (validation included), instead of after
    `epochs` epochs that will never run; re-planning each epoch keeps the lr from hitting its floor
    early or never decaying."""
    schedule = run.scheduler.lr_lambdas[0]
    if not isinstance(schedule, WarmupLinear) or run.step == 0:
        return
    per_step = run.cpu_seconds / run.step
    remaining = max(0.0, run.cfg.cpu_budget_s - run.cpu_seconds)
    total = min(run.cfg.epochs * max(1, run.step // run.epoch), run.step + int(remaining / per_step))
    if run.cfg.max_steps > 0:  # a step cap the budget cannot reach keeps the schedule off the clock (and the load)
        total = min(total, run.cfg.max_steps)
    if run.epoch == 1:
        schedule.warmup_steps = max(1, min(schedule.warmup_steps, int(run.cfg.warmup_frac * total)))
    schedule.total_steps = max(schedule.warmup_steps + 1, total)


def _task_metrics(task: TrainTask, progress: Progress | None = None) -> dict[str, float]:
    """`task.validate()`; under torchrun each process scores its share of the validation users and the
    means are combined (rank 0's result, so every process makes the same early-stopping decision).
    Alone, a Cancel stops the scoring between batches of users (the demo's validation is ~4 CPU s)."""
    if distributed.world() == 1 or task.valid is None:
        return task.validate(progress)

    def on(part: EvalSet) -> dict[str, float]:
        whole, task.valid = task.valid, part
        try:
            return task.validate()
        finally:
            task.valid = whole

    metrics = distributed.sharded_mean(task.valid, on)
    return dict(zip(metrics, distributed.from_main(list(metrics.values()))))


def _validate(run: _Run, progress: Progress, total_steps: int, loss: float | None) -> None:
    metrics = _task_metrics(run.task, progress.quiet())
    if not metrics or progress.cancelled:  # a validation cut short is a partial mean: never a "best"
        return
    run.history[-1]["metrics"] = metrics
    value = metrics.get(run.metric)
    if value is not None and math.isfinite(value):
        run.stopper.update(float(value), run.epoch, run.task.module)
    progress.update(run.step, total_steps, epoch=run.epoch, loss=loss, metrics=dict(metrics),
                    message=f"epoch {run.epoch}: {run.metric}={value:.4f} (best {run.stopper.best:.4f})"
                    if value is not None else f"epoch {run.epoch}")


# ---- chunked inference ---------------------------------------------------------------------------


def score_chunk_rows(n_items: int, requested: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows of full-catalogue float32 scores per chunk, so one chunk stays under `budget_bytes`."""
    return max(1, min(requested, budget_bytes // max(1, 4 * n_items)))


def chunk_end(sizes: np.ndarray, start: int, max_rows: int, max_cells: int) -> int:
    """End of the chunk of ascending `sizes` from `start` when each row is padded to the chunk's largest:
    at most `max_rows` rows and rows x largest <= `max_cells`, and at least one row."""
    ends = np.arange(start + 1, min(len(sizes), start + max_rows) + 1)
    fits = np.searchsorted((ends - start) * sizes[ends - 1], max_cells, side="right")
    return start + max(1, int(fits))

