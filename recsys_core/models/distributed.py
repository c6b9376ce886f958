"""Data-parallel training across the processes `torchrun --nproc_per_node N -m recsys_core train ...` starts.

Every process (rank) holds the whole dataset and a full copy of the model, runs the same seeded
schedule and draws the same global batches; each computes the loss of its own share of a batch, and
DistributedDataParallel averages the gradients, so all ranks take the same optimizer step. One process
(no torchrun) never touches `torch.distributed`: every helper here is then a no-op.

Plain DDP rather than Hugging Face Accelerate: the loop already owns device choice, bf16/fp16 autocast,
the fp16 GradScaler and OOM back-off, and must keep doing exactly that in one process; Accelerate would
replace about 20 lines of wrapping below with a second way to do each of those, not remove them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from recsys_core.data.splits import EvalSet
from recsys_core.errors import ConfigError, ModelError


def init_from_env() -> int:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); returns the world size.

    gloo on CPU, nccl when CUDA is there (each rank then owns GPU LOCAL_RANK). Without torchrun, or
    with one process, nothing is initialised and 1 is returned."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return world()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise ConfigError("WORLD_SIZE is set but RANK/MASTER_ADDR are not",
                          hint="start distributed training with torchrun --nproc_per_node N -m recsys_core train ...")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """The process that prints, checkpoints, saves and records (the only one without torchrun)."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_initialized() else 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of each rank's `values` (float64), the same on every rank."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def min_over_ranks(value: int) -> int:
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def from_main(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank: decisions (stop, schedule) must not depend on a rank's own clock."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def check_in_sync(module: nn.Module) -> None:
    """Raise when the ranks' weights differ: the gradient averaging failed and rank 0 would save a model
    trained on its share of the data only. Compares one float64 checksum per rank."""
    if world() == 1:
        return
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float((p.double() ** 2).sum()) for p in module.parameters())
    sums = torch.zeros(world(), dtype=torch.float64, device=_comm_device())
    sums[rank()] = total
    dist.all_reduce(sums)
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-9, atol=0.0):
        raise ModelError(f"the {world()} training processes ended with different weights (checksums "
                         f"{sums.cpu().tolist()})", hint="report this: distributed gradient averaging failed")


# ---- sharding --------------------------------------------------------------------------------------


def shards(n: int, parts: int | None = None) -> list[slice]:
    """`parts` contiguous slices of range(n), sizes differing by at most one (np.array_split's rule)."""
    cuts = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(n), parts or world())])
    return [slice(int(a), int(b)) for a, b in pairwise(cuts)]


def eval_subset(valid: EvalSet, rows: slice) -> EvalSet:
    return EvalSet(np.asarray(valid.users)[rows], list(valid.histories[rows]), list(valid.targets[rows]))


def sharded_mean(valid: EvalSet, validate: Callable[[EvalSet], dict[str, float]]) -> dict[str, float]:
    """Mean per-user metrics over `valid`, each rank scoring its own users: sum of (mean x users) / users.

    With fewer users than ranks every rank scores them all (no rank may return without keys)."""
    if world() == 1 or len(valid) < world():
        return validate(valid)
    part = eval_subset(valid, shards(len(valid))[rank()])
    local = validate(part)
    keys = sorted(local)
    sums = sum_over_ranks([local[k] * len(part) for k in keys] + [float(len(part))])
    return {k: s / sums[-1] for k, s in zip(keys, sums[:-1])}


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate each rank's rows (rank r holds rows `shards(n)[r]`) into the full [n, ...] tensor."""
    if world() == 1:
        return local
    cuts = shards(n)
    longest = max(s.stop - s.start for s in cuts)
    device = _comm_device()
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:len(local)] = local.to(device)
    out = [torch.empty_like(padded) for _ in cuts]
    dist.all_gather(out, padded)
    return torch.cat([o[:s.stop - s.start] for o, s in zip(out, cuts)]).to(local.device)


class Shards:
    """The processes' split of `evaluate`'s users (`evaluation.metrics.Shards`): the test split is scored
    N ways, and every process gets the whole result."""

    @property
    def world(self) -> int:
        return world()

    def rows(self, n: int) -> slice:
        return shards(n)[rank()]

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        return gather_rows(local, n)

    def union(self, seen: torch.Tensor) -> torch.Tensor:
        """Items in any process's top K (bool [len(ks), n_items]); gloo reduces no bools, so as counts."""
        counts = seen.to(torch.int32).to(_comm_device())
        dist.all_reduce(counts)
        return (counts > 0).to(seen.device)


def evaluation_shards() -> Shards | None:
    """How `evaluate` splits the users between processes under torchrun; None in one process."""
    return Shards() if world() > 1 else None


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of `local` concatenated in rank order, differentiable (a rank's loss sends
    gradient back to the rows other ranks computed), and where this rank's rows start."""
    if world() == 1:
        return local, 0
    sizes = [int(s) for s in sum_over_ranks([float(i == rank()) * len(local) for i in range(world())])]
    longest = max(sizes)
    padded = torch.cat([local, local.new_zeros((longest - len(local), *local.shape[1:]))])
    gathered = _GatherRows.apply(padded)
    return torch.cat([gathered[i * longest:i * longest + s] for i, s in enumerate(sizes)]), sum(sizes[:rank()])


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized row blocks; backward sums every rank's gradient and keeps this rank's block
    (an all-reduce: gloo has no reduce-scatter, and the blocks are small)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(world())]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = len(local)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows:(rank() + 1) * ctx.rows]


class LossModule(nn.Module):
    """What DistributedDataParallel wraps: the task's network as a submodule, its loss as the forward,
    so DDP's gradient hooks fire on the parameters the task's own loss code uses."""

    def __init__(self, module: nn.Module, loss: Callable[[np.ndarray, np.random.Generator, slice], torch.Tensor]) -> None:
        super().__init__()
        self.network = module
        self._loss = loss

    def forward(self, batch: np.ndarray, rng: np.random.Generator, rows: slice) -> torch.Tensor:
        return self._loss(batch, rng, rows)


def wrap(module: nn.Module, loss: Callable, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # find_unused_parameters: BertModel's word embeddings are never used (items come in as inputs_embeds).
    # Buffers (position ids) are constants: synced once at start, never per step.
    return DistributedDataParallel(LossModule(module, loss), device_ids=ids, find_unused_parameters=True,
                                   forward_sync_buffers=False)
