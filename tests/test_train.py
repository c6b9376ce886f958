"""The generic training loop: device choice, memory planning, schedule, early stopping, OOM
back-off, cancel and checkpoint/resume, on a toy regression task (the loop never sees sequences)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from recsys_core.errors import ConfigError, ModelError, ResourceError
from recsys_core.models import checkpoints, loop
from recsys_core.models.settings import TrainConfig
from recsys_core.progress import Progress


class ToyTask:
    """Fit y = X w with a linear layer; the "validation metric" is minus the validation MSE."""

    def __init__(self, n: int = 256, oom_above: int = 0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.arange(1.0, 9.0)
        torch.manual_seed(seed)
        self.module = nn.Linear(8, 1)
        self.oom_above = oom_above
        self.batch_sizes: list[int] = []

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.x) / batch_size)

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(len(self.x))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def loss(self, batch: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.oom_above and len(batch) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batch_sizes.append(len(batch))
        idx = torch.from_numpy(batch)
        return ((self.module(self.x[idx]).squeeze(-1) - self.y[idx]) ** 2).mean()

    def validate(self, progress: Progress | None = None) -> dict[str, float]:
        with torch.no_grad():
            return {"ndcg@10": -float(((self.module(self.x).squeeze(-1) - self.y) ** 2).mean())}


CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only stall


def test_device_choice_auto_and_explicit():
    assert loop.pick_device("cpu") == CPU
    assert loop.pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert loop.pick_device("auto").type in {"cpu", "mps"}
        with pytest.raises(ConfigError, match="no usable CUDA"):
            loop.pick_device("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        loop.pick_device("tpu")


def test_no_autocast_on_cpu():
    assert loop.amp_dtype(CPU, True) is None


@pytest.mark.parametrize("arg", ["n_items", "max_len", "hidden", "batch", "layers"])
def test_estimate_memory_grows_with_every_size(arg):
    base = {"n_items": 5000, "max_len": 100, "hidden": 64, "batch": 64, "layers": 2}
    small = loop.estimate_memory(**base)
    big = loop.estimate_memory(**{**base, arg: base[arg] * 2})
    assert big > small > 0


def test_estimate_memory_is_in_the_right_ballpark():
    # ML-1M-sized BERT4Rec step: tens to hundreds of MiB, not bytes and not terabytes.
    need = loop.estimate_memory(n_items=3706, max_len=200, hidden=64, batch=128, layers=2, output_positions=41)
    assert 20 * 2**20 < need < 4 * 2**30


def test_batch_is_halved_until_it_fits():
    messages = []
    size = loop.plan_batch_size(128, lambda b: b * 2**20, CPU, {"batch_size": 128}, available=40 * 2**20,
                                progress=Progress(lambda e: messages.append(e.message)))
    assert size == 32 and "using 32" in messages[-1]


def test_too_big_even_at_batch_1_names_what_to_change():
    def need(batch: int) -> int:
        return loop.estimate_memory(n_items=50_000_000, max_len=512, hidden=1024, batch=batch, layers=2)

    with pytest.raises(ResourceError) as err:
        loop.plan_batch_size(128, need, CPU, {"batch_size": 128, "max_len": 512, "hidden": 1024},
                             available=8 * 2**30)
    text = str(err.value)
    assert "GiB" in text and "hidden" in text and "max_len" in text and "sampled" in text


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = loop.warmup_linear(opt, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1.0)
    assert lrs[10] > lrs[60] > lrs[109] >= 0.05 - 1e-9


def test_lr_floor_one_keeps_the_peak_lr_after_the_warm_up():
    task = ToyTask()
    flat = loop.train(task, TrainConfig(epochs=6, batch_size=32, lr=0.01, warmup_frac=0.1, lr_floor=1.0,
                                        patience=0), CPU)
    decayed = loop.train(ToyTask(), TrainConfig(epochs=6, batch_size=32, lr=0.01, warmup_frac=0.1, patience=0), CPU)
    assert [h["lr"] for h in flat.history[1:]] == pytest.approx([0.01] * (len(flat.history) - 1))
    assert decayed.history[-1]["lr"] < 0.2 * 0.01


def test_early_stopping_keeps_the_best_weights():
    module = nn.Linear(2, 1)
    stopper = loop.EarlyStopping(patience=2)
    with torch.no_grad():
        module.weight.fill_(1.0)
    assert stopper.update(0.5, 1, module)
    with torch.no_grad():
        module.weight.fill_(2.0)
    assert not stopper.update(0.4, 2, module) and not stopper.should_stop
    assert not stopper.update(0.3, 3, module) and stopper.should_stop
    stopper.restore(module)
    assert torch.all(module.weight == 1.0) and stopper.best_epoch == 1


def test_loop_learns_and_stops_early():
    task = ToyTask()
    result = loop.train(task, TrainConfig(epochs=300, batch_size=32, lr=0.05, patience=3), CPU)
    assert result.best_metric > -0.01
    assert result.stopped in {"early_stop", "epochs"}
    assert result.history[-1]["metrics"]["ndcg@10"] <= result.best_metric


def test_out_of_memory_halves_the_batch_and_carries_on():
    task = ToyTask(oom_above=20)
    messages = []
    result = loop.train(task, TrainConfig(epochs=2, batch_size=64), CPU, Progress(lambda e: messages.append(e.message)))
    assert result.batch_size == 16 and result.stopped == "epochs"
    assert max(task.batch_sizes) <= 20 and sum(task.batch_sizes) == 2 * 256  # no example skipped
    assert any("batch_size halved to 32" in m for m in messages)
    assert any("batch_size halved to 16" in m for m in messages)


def test_cancel_between_steps_keeps_best_weights():
    task = ToyTask()
    progress = Progress()
    steps = []

    def on_event(event):
        steps.append(event.step)
        if event.epoch >= 3:
            progress.cancel()

    progress = Progress(on_event)
    result = loop.train(task, TrainConfig(epochs=1000, batch_size=32, lr=0.05), CPU, progress, log_every=1)
    assert result.stopped == "cancelled" and result.epochs_run <= 3
    best = max(h["metrics"]["ndcg@10"] for h in result.history if "metrics" in h)
    assert task.validate()["ndcg@10"] == pytest.approx(best)


def test_a_cancel_during_validation_stops_it_and_its_partial_score_is_never_the_best():
    class CancelledMidValidation(ToyTask):
        """Cancel arrives while epoch 3 validates: the evaluator stops early with a partial (here absurd) mean."""

        def validate(self, progress: Progress | None = None) -> dict[str, float]:
            self.validations = getattr(self, "validations", 0) + 1
            if self.validations == 3:
                progress.cancel()  # the inner progress shares the outer cancel flag
                return {"ndcg@10": 1e9}
            return super().validate(progress)

    task = CancelledMidValidation()
    events = []
    result = loop.train(task, TrainConfig(epochs=1000, batch_size=32, lr=0.05), CPU, Progress(events.append),
                        log_every=1)
    assert result.stopped == "cancelled" and result.epochs_run == 3
    assert task.validations == 3  # nothing validated after the cancel
    assert all(e.message != "evaluating" for e in events)  # validation never overwrote the training's progress
    assert result.best_metric < 1e9  # the partial mean was not taken as the best
    assert task.validate()["ndcg@10"] == pytest.approx(result.best_metric)  # best weights restored


def test_validation_of_a_sequential_model_reads_cancel_between_batches_of_users() -> None:
    from recsys_core.data.demo import load_demo
    from recsys_core.data.splits import leave_one_out
    from recsys_core.models.sasrec import SASRec, SASRecConfig
    from recsys_core.models.sequential import VALIDATION_BATCH_USERS, validation_metrics
    from recsys_core.models.settings import build_config

    ds = load_demo()
    split = leave_one_out(ds)
    config = {"hidden": 16, "layers": 1, "heads": 1, "max_len": 20, "epochs": 1, "max_steps": 2, "device": "cpu"}
    model = SASRec(build_config(SASRecConfig, config)).fit(ds, split=split)
    stop = Progress()
    stop.cancel()
    validation_metrics(model, split.valid, stop)
    assert stop.events[-1].total == len(split.valid) > VALIDATION_BATCH_USERS
    assert stop.events[-1].step <= VALIDATION_BATCH_USERS  # stopped after the first batch of users


def test_cpu_budget_stops_after_the_epoch_that_passes_it_with_the_lr_decayed():
    cfg = TrainConfig(epochs=10_000, batch_size=8, lr=0.01, cpu_budget_s=0.5)
    result = loop.train(ToyTask(), cfg, CPU)
    assert result.stopped == "cpu_budget" and result.epochs_run < 10_000
    assert result.cpu_seconds >= 0.5 and result.history[-1]["cpu_seconds"] == round(result.cpu_seconds, 3)
    # The decay was planned for the epochs that fit in the budget, not for 10,000 epochs.
    assert result.history[-1]["lr"] < 0.5 * cfg.lr


def _events(task: ToyTask, cfg: TrainConfig) -> tuple[loop.LoopResult, list]:
    events: list = []
    result = loop.train(task, cfg, CPU, Progress(callback=events.append))
    return result, [e for e in events if e.total]


def test_under_a_cpu_budget_the_progress_total_is_where_the_budget_runs_out():
    """The bar's 100 % is the end of the epoch in which the budget runs out at the CPU per step so far (issue 21:
    it stopped at 43-48 % of a total the budget could never reach)."""
    result, events = _events(ToyTask(), TrainConfig(epochs=10_000, batch_size=8, lr=0.01, patience=0,
                                                    cpu_budget_s=0.5))
    per_epoch = ToyTask().n_batches(8)
    assert result.stopped == "cpu_budget" and result.steps < 10_000 * per_epoch
    last_epoch = [e for e in events if e.step > result.steps - per_epoch]
    assert all(result.steps <= e.total <= result.steps + per_epoch for e in last_epoch), \
        [(e.step, e.total) for e in last_epoch]
    assert events[-1].step == events[-1].total == result.steps
    assert max(e.total for e in events) < 10_000 * per_epoch  # re-planned from the first report on


class SlowingTask(ToyTask):
    """Each step of the third epoch burns 20 ms of CPU, as when a busy machine slows a run down mid-way."""

    def loss(self, batch: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if len(self.batch_sizes) >= 2 * self.n_batches(8):
            until = time.process_time() + 0.02
            while time.process_time() < until:
                pass
        return super().loss(batch, rng)


def test_a_slow_last_epoch_keeps_the_progress_total_at_that_epochs_end():
    """The budget is checked at an epoch's end, so the bar's 100 % never falls back to the current step when the
    last steps were slower than the estimate (CI, loaded: totals equal to each step in the last epoch)."""
    per_epoch = ToyTask().n_batches(8)
    result, events = _events(SlowingTask(), TrainConfig(epochs=10_000, batch_size=8, lr=0.01, patience=0,
                                                        cpu_budget_s=0.3))
    assert result.stopped == "cpu_budget" and result.steps == 3 * per_epoch
    last_epoch = [e for e in events if 2 * per_epoch < e.step < 3 * per_epoch]
    assert last_epoch and all(e.total >= 3 * per_epoch for e in last_epoch), [(e.step, e.total) for e in last_epoch]
    assert last_epoch[-1].total == 3 * per_epoch  # the estimate has caught up with where the run stops


def test_out_of_memory_under_torchrun_stops_with_the_batch_size_to_use():
    """Processes under torchrun cannot halve their batch one by one (the others would wait forever): the run
    stops with a clear error naming a smaller batch size, instead of hanging or a bare CUDA message."""
    task = ToyTask(oom_above=20)
    run = loop._Run(task, TrainConfig(epochs=1, batch_size=64, lr=0.01), CPU, 5, "ndcg@10")
    run.ddp = lambda batch, rng, rows: task.loss(batch[rows], rng)  # what DDP's forward calls
    with pytest.raises(ResourceError, match="ran out of cpu memory at batch size 64") as info:
        loop._epoch_steps(run, Progress(), np.random.default_rng(0))
    assert "batch_size=32" in info.value.hint and run.step == 0


def test_a_step_cap_inside_the_cpu_budget_makes_the_same_model_as_no_budget():
    """The demo profile caps steps and budgets CPU seconds: when the cap comes first, the schedule must not
    follow the measured CPU rate, or a busy machine would train another model."""
    cfg = TrainConfig(epochs=50, batch_size=32, lr=0.01, patience=0, max_steps=40)
    plain, budgeted = ToyTask(), ToyTask()
    a = loop.train(plain, cfg, CPU)
    b = loop.train(budgeted, TrainConfig(**{**cfg.__dict__, "cpu_budget_s": 3600.0}), CPU)
    assert a.stopped == b.stopped == "max_steps"
    assert [h["lr"] for h in b.history] == [h["lr"] for h in a.history]
    torch.testing.assert_close(budgeted.module.weight, plain.module.weight, rtol=0, atol=0)


def test_resume_from_checkpoint_replays_an_unbroken_run(tmp_path):
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.01, patience=0, checkpoint_dir=str(tmp_path))
    straight = ToyTask()
    loop.train(straight, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": ""}), CPU)

    progress = Progress(lambda e: progress.cancel() if e.epoch >= 4 else None)
    first = ToyTask()
    broken = loop.train(first, cfg, CPU, progress)
    assert broken.stopped == "cancelled" and checkpoints.checkpoint_exists(tmp_path)

    second = ToyTask()  # fresh process, fresh weights: everything comes from the checkpoint
    result = loop.train(second, cfg, CPU)
    assert result.epochs_run == 6 and [h["epoch"] for h in result.history] == list(range(1, 7))
    for a, b in zip(second.module.parameters(), straight.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_for_another_model_is_refused(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, checkpoint_dir=str(tmp_path))
    loop.train(ToyTask(), cfg, CPU)
    other = ToyTask()
    other.module = nn.Linear(8, 2)
    with pytest.raises(ModelError, match="does not match"):
        loop.train(other, TrainConfig(epochs=2, batch_size=32, checkpoint_dir=str(tmp_path)), CPU)


def _edit_checkpoint_meta(directory, edit) -> None:
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    path.write_text(edit(meta) if callable(edit) else edit)


def test_a_checkpoint_without_a_format_version_resumes_as_version_0(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.01, patience=0, checkpoint_dir=str(tmp_path))
    straight = ToyTask()
    loop.train(straight, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": ""}), CPU)
    progress = Progress(lambda e: progress.cancel() if e.epoch >= 2 else None)
    loop.train(ToyTask(), cfg, CPU, progress)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["format_version"] == checkpoints.CHECKPOINT_FORMAT_VERSION
    _edit_checkpoint_meta(tmp_path, lambda m: json.dumps({k: v for k, v in m.items() if k != "format_version"}))

    resumed = ToyTask()
    result = loop.train(resumed, cfg, CPU)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for a, b in zip(resumed.module.parameters(), straight.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_checkpoint_from_a_newer_version_is_refused_with_what_to_do(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, checkpoint_dir=str(tmp_path))
    loop.train(ToyTask(), cfg, CPU)
    _edit_checkpoint_meta(tmp_path, lambda m: json.dumps({**m, "format_version": 99}))
    with pytest.raises(ModelError, match="newer version") as caught:
        loop.train(ToyTask(), TrainConfig(epochs=2, batch_size=32, checkpoint_dir=str(tmp_path)), CPU)
    assert caught.value.file.endswith("checkpoint.json")
    assert "upgrade" in caught.value.hint and "delete the checkpoint folder" in caught.value.hint


@pytest.mark.parametrize("edit", [
    "[1, 2]", "{", lambda m: json.dumps({**m, "format_version": "1"}),
    lambda m: json.dumps({k: v for k, v in m.items() if k != "stopper"}),
    lambda m: json.dumps({**m, "epoch": "3"}), lambda m: json.dumps({**m, "batch_size": 0}),
    lambda m: json.dumps({**m, "param_groups": [{"lr": 0.1}]}),
], ids=["list", "torn", "version_text", "no_stopper", "epoch_text", "batch_zero", "groups_garbled"])
def test_a_damaged_checkpoint_meta_is_a_model_error(tmp_path, edit):
    cfg = TrainConfig(epochs=1, batch_size=32, checkpoint_dir=str(tmp_path))
    loop.train(ToyTask(), cfg, CPU)
    _edit_checkpoint_meta(tmp_path, edit)
    with pytest.raises(ModelError) as caught:
        loop.train(ToyTask(), TrainConfig(epochs=2, batch_size=32, checkpoint_dir=str(tmp_path)), CPU)
    assert "delete the checkpoint folder" in caught.value.hint


def test_a_torn_checkpoint_tensor_file_is_a_model_error(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, checkpoint_dir=str(tmp_path))
    loop.train(ToyTask(), cfg, CPU)
    weights = tmp_path / "checkpoint.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ModelError, match="unreadable"):
        loop.train(ToyTask(), TrainConfig(epochs=2, batch_size=32, checkpoint_dir=str(tmp_path)), CPU)


def test_a_run_neither_depends_on_nor_changes_the_process_wide_generator():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.01, patience=0)
    first = ToyTask()
    torch.manual_seed(1)  # the process's own state, after ToyTask seeded its init
    before = torch.get_rng_state()
    loop.train(first, cfg, CPU)
    assert torch.equal(torch.get_rng_state(), before)  # whatever else the process draws is undisturbed
    second = ToyTask()
    torch.rand(1000)  # another session drawing in between
    loop.train(second, cfg, CPU)
    for a, b in zip(first.module.parameters(), second.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_probe_is_charged_its_own_threads_cpu_not_the_servers_other_work() -> None:
    """An estimate runs in the shared server beside other sessions' work (the LLM warm-up): inside
    `thread_cpu_clock` the run is charged this thread's CPU only, outside it the whole process's."""
    import threading
    import time

    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    other, threads = threading.Thread(target=busy, daemon=True), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the server: torch computes on the calling thread
    other.start()
    try:
        with loop.thread_cpu_clock():
            before = loop.cpu_time()
            time.sleep(0.5)  # this thread does nothing; the other one spins
            own = loop.cpu_time() - before
        before = loop.cpu_time()
        time.sleep(0.5)
        process = loop.cpu_time() - before
    finally:
        stop.set()
        other.join()
        torch.set_num_threads(threads)
    assert own < 0.05 and process > 0.1, (own, process)
