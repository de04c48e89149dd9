"""Forward passes in lockstep over ranks whose shares of an evaluation set differ in size.

Under ZeRO-3 every forward pass is a collective (each layer's weights are gathered on use), so every rank must make
as many forward passes as the others, or the rank with one batch more waits forever. `lockstep` yields a rank's
batches and then None until no rank has a batch left: the caller runs a stand-in forward for None and drops its
result, so every sample is still counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def lockstep(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any] | None]:
    """This rank's batches, then None while another rank still has one (one tiny all-reduce per batch)."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not _any_rank(batch is not None, device):
            return
        yield batch


def is_zero3(module: nn.Module) -> bool:
    """True when the module's parameters are partitioned by ZeRO-3."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


@contextmanager
def gathered(params: list[torch.nn.Parameter], enabled: bool) -> Iterator[None]:
    """The full `params` on every rank inside the block under ZeRO-3 (a collective); nothing otherwise."""
    with deepspeed.zero.GatheredParameters(params, enabled=enabled and bool(params)):
        yield
