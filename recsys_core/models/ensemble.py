"""Seed ensembles of the sequential encoders (`members` > 1): each member's loop settings, their joint output
layer, and how their tensors share one safetensors file.

A member is the run its own seed gives alone; the ensemble scores the mean of the members' logits, which ranks
exactly as the mean of their log-probabilities (each member's log-sum-exp is a constant per user). That mean is
one dot product: the users' vectors side by side against the items' side by side over the member count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from recsys_core.errors import ModelError
from recsys_core.models.settings import TrainConfig

REPORTED = ("stopped", "steps", "best_epoch", "best_metric", "cpu_seconds")  # of each member, in the fit report
PREFIX = "member"  # saved tensors of member i > 0: "member{i}.<name>"; member 0's keep their own names


def member_config(train: TrainConfig, member: int, members: int) -> TrainConfig:
    """Member `member`'s loop settings: its own seed (one member keeps the run's seed; the members of seed s are
    s x members + i, so two seeds' ensembles share no member), an equal share of the CPU budget and a checkpoint
    folder of its own."""
    folder = train.checkpoint_dir and (train.checkpoint_dir if member == 0 else f"{train.checkpoint_dir}/member{member}")
    return dataclasses.replace(train, seed=train.seed * members + member, cpu_budget_s=train.cpu_budget_s / members,
                               checkpoint_dir=folder)


@torch.no_grad()
def output_layer(modules: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(item weights, bias) that the members' user vectors, side by side, are scored against."""
    if len(modules) == 1:
        return modules[0].item_weights(), modules[0].bias
    weights = torch.cat([m.item_weights() for m in modules], dim=1) / len(modules)
    bias = None if modules[0].bias is None else torch.stack([m.bias for m in modules]).mean(0)
    return weights, bias


def improved(reports: Sequence[dict]) -> bool | None:
    """Whether validation ever beat its first check, for the ensemble: in any member (a run is "no improvement" only
    when none of its members learned past its start); None when no member validated twice."""
    seen = [r.get("improved") for r in reports if r.get("improved") is not None]
    return any(seen) if seen else None


def report(train: TrainConfig, members: int, reports: Sequence[dict], joint: dict | None) -> dict:
    """The fit report's "members": each member's seed, stop and best validation, and the ensemble's own validation
    (`joint`: what its scores rank; None when it did not validate)."""
    each = [{"seed": member_config(train, i, members).seed, **{k: r[k] for k in REPORTED}} for i, r in enumerate(reports)]
    out = {"requested": members, "trained": len(reports), "each": each}
    return out if joint is None else {**out, "valid": joint}


def joined_tensors(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Every member's tensors under one namespace (a one-member file is as before members existed)."""
    return {f"{PREFIX}{i}." * (i > 0) + name: value for i, module in enumerate(modules)
            for name, value in module.state_dict().items()}


def split_tensors(tensors: dict[str, torch.Tensor], members: int) -> list[dict[str, torch.Tensor]]:
    """`joined_tensors` back into one dict per member; at most the config's `members` of them."""
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        head, _, rest = name.partition(".")
        number = head[len(PREFIX):] if head.startswith(PREFIX) else ""
        index = int(number) if number.isdigit() else 0
        groups.setdefault(index, {})[rest if index else name] = value
    if sorted(groups) != list(range(len(groups))) or len(groups) > members:
        raise ModelError(f"saved weights hold members {sorted(groups)}, but config.json sets members={members}",
                         hint="the folder's model.safetensors was edited or mixed with another model's; re-export it")
    return [groups[i] for i in range(len(groups))]
