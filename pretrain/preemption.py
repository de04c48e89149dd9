"""Stop cleanly when the scheduler asks: a signal sets a flag, the trainer checkpoints and exits to be
requeued.

Slurm sends SIGUSR1 before the time limit (``#SBATCH --signal=USR1@300``) and SIGTERM on preemption. The
handler only records the signal; the training loop checks :func:`any_rank_requested` after a step, so every
rank stops after the same step, writes its checkpoint and exits with :data:`PREEMPTED_EXIT_CODE`, which
``launch/slurm/run.sh`` answers with ``scontrol requeue``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from types import FrameType

import torch
import torch.distributed as dist

# EX_TEMPFAIL from sysexits.h ("temporary failure, retry later"); launch/slurm/run.sh holds the same number.
PREEMPTED_EXIT_CODE = 75
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Set when one of ``signals`` arrives; restores the previous handlers on :meth:`close`.

    Must be created in the main thread (Python delivers signals there).
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        """True once a preemption signal has arrived in this process."""
        return self.received is not None

    def close(self) -> None:
        """Put back the handlers that were installed before this flag."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> PreemptionFlag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def any_rank_requested(flag: PreemptionFlag) -> bool:
    """True on every rank when any rank got a signal.

    A collective: every rank must call it at the same steps. On NCCL the result is read back from the GPU,
    which waits for the queued work; the warning comes minutes ahead, so checking every few steps is enough.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag.requested
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    requested = torch.tensor([int(flag.requested)], dtype=torch.int32, device=device)
    dist.all_reduce(requested, op=dist.ReduceOp.MAX)
    return bool(requested.item())
