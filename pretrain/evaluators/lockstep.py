"""Forward passes in lockstep over ranks whose shares of an evaluation set differ in size.

Under ZeRO-3 every forward pass is a collective (each layer's weights are gathered on use), so every rank must make
as many forward passes as the others, or the rank with one batch more waits forever. `lockstep` yields a rank's
batches and then None until no rank has a batch left: the caller runs a stand-in forward for None and drops its
result, so every sample is still counted once.

An error on one rank inside the loop (its loader, or the caller's work on its batch) would leave the other ranks in
the next all-reduce for good. The failing rank answers that all-reduce instead, saying it failed (its loader's error
in the loop itself, the caller's through :func:`failures_shared`), the ranks exchange the failing ranks' one-line
messages, and every rank raises: the failing rank its own error, the others a :class:`RankFailedError` naming it.

The same all-reduce carries whether a preemption signal reached the rank
(``pretrain.cluster.preemption.requested_here``), at no extra cost: when any rank got one, every rank raises
:class:`Preempted` before the same batch, so the run checkpoints within one evaluation batch of the signal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from pretrain.cluster.distributed import gather, several_ranks
from pretrain.cluster.errors import RankFailedError
from pretrain.cluster.preemption import Preempted, requested_here


def _any_rank(flag: bool, device: torch.device, failed: bool = False, stop: bool = False) -> tuple[bool, bool, bool]:
    """(any rank has `flag`, any rank `failed`, any rank asked to `stop`): one all-reduce."""
    if not several_ranks():
        return flag, failed, stop
    t = torch.tensor([int(flag), int(failed), int(stop)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item()), bool(t[1].item()), bool(t[2].item())


def one_line(err: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _raise_failures(own: BaseException | None) -> None:
    """Every rank's message (None where it did not fail), then raise: `own` on a failing rank, else the first
    failing rank's message as a RankFailedError."""
    messages = gather(None if own is None else one_line(own))
    if own is not None:
        raise own
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise RankFailedError(f"rank {rank} failed during the evaluation: {message}")


# The lockstep loop this rank is inside (between two all-reduces), so that an error in the caller's work on a batch
# can still answer the all-reduce the other ranks wait in.
_ACTIVE: list[torch.device] = []


def lockstep(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any] | None]:
    """This rank's batches, then None while another rank still has one (one tiny all-reduce per batch); raises
    :class:`Preempted` on every rank at the same batch once a preemption signal reached any rank."""
    it = iter(batches)
    _ACTIVE[:] = [device]
    while True:
        try:
            batch = next(it, None)
        except Exception as err:
            _ACTIVE.clear()
            _any_rank(False, device, failed=True)
            _raise_failures(err)
        more, failed, stop = _any_rank(batch is not None, device, stop=requested_here())
        if failed:
            _ACTIVE.clear()
            _raise_failures(None)
        if not more:
            _ACTIVE.clear()
            return
        if stop:
            _ACTIVE.clear()
            raise Preempted("a preemption signal arrived during the evaluation")
        yield batch


@contextmanager
def failures_shared() -> Iterator[None]:
    """Around an evaluator: an error raised while this rank is inside a lockstep loop is told to the other ranks
    (each of which then raises a RankFailedError with its message) before it propagates here."""
    _ACTIVE.clear()
    try:
        yield
    except Exception as err:
        if not _ACTIVE:
            raise
        device = _ACTIVE.pop()
        _any_rank(False, device, failed=True)
        _raise_failures(err)


def is_zero3(module: nn.Module) -> bool:
    """True when the module's parameters are partitioned by ZeRO-3."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


@contextmanager
def gathered(params: list[torch.nn.Parameter], enabled: bool) -> Iterator[None]:
    """The full `params` on every rank inside the block under ZeRO-3 (a collective); nothing otherwise."""
    with deepspeed.zero.GatheredParameters(params, enabled=enabled and bool(params)):
        yield
