"""Stop cleanly when the scheduler asks: a signal sets a flag, the trainer checkpoints and exits to be
requeued.

Slurm sends SIGUSR1 before the time limit (``#SBATCH --signal=USR1@300``) and SIGTERM on preemption. The
handler only records the signal; the training loop checks :func:`any_rank_requested` after a step and after a
save, so every rank stops after the same step, writes its checkpoint and exits with :data:`PREEMPTED_EXIT_CODE`,
which ``launch/slurm/run.sh`` answers with ``scontrol requeue``. Inside :func:`watched`, the long phases check the
flag too: an evaluation's lockstep loop (``pretrain/evaluators/lockstep.py``) carries :func:`requested_here` in the
all-reduce it makes per batch anyway, and every rank raises :class:`Preempted` at the same batch.

Slurm signals every process of the step, the DataLoader workers included (so does ``kill -TERM -PGID``). A
worker killed by it makes its rank fail with "DataLoader worker (pid N) is killed by signal" before the
checkpoint, so the loaders start their workers under :func:`worker_signals_blocked` with
:func:`shield_worker` as ``worker_init_fn``: a worker ignores SIGTERM, SIGUSR1 and SIGINT and the main
process decides. A worker still ends when its DataLoader shuts it down (which sends SIGTERM from the parent
after a 5 s grace, and is how ``multiprocessing`` ends daemonic children at exit), when its main process
has gone (the DataLoader's parent watchdog; an orphan also obeys SIGTERM and SIGINT again), and on SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

# EX_TEMPFAIL from sysexits.h ("temporary failure, retry later"); launch/slurm/run.sh holds the same number.
PREEMPTED_EXIT_CODE = 75
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# What a data worker leaves to its main process: the preemption signals, and Ctrl-C (the terminal sends SIGINT to
# the whole foreground process group; the main process stops on it and shuts its workers down).
WORKER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Raised on every rank at the same point of a long phase (an evaluation batch) when some rank got a signal."""


class PreemptionFlag:
    """Set when one of ``signals`` arrives; restores the previous handlers on :meth:`close`.

    Must be created in the main thread (Python delivers signals there). Importing this module does not import
    torch, so an entry point sets the flag up first thing, before the seconds of imports and set-up.
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

    A collective: every rank must call it at the same steps. It runs on the CPU over gloo (on NCCL jobs a gloo
    group of its own, made at the first call), so the host never waits for the GPU's queued work.
    """
    import torch  # here, so that the flag itself can be set up before torch is imported
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag.requested
    requested = torch.tensor([int(flag.requested)], dtype=torch.int32)
    dist.all_reduce(requested, op=dist.ReduceOp.MAX, group=_cpu_group())
    return bool(requested.item())


_WATCHED: list[PreemptionFlag] = []


@contextmanager
def watched(flag: PreemptionFlag) -> Iterator[None]:
    """Inside the block, :func:`requested_here` reads `flag`: the long phases of a run can stop on it."""
    _WATCHED.append(flag)
    try:
        yield
    finally:
        _WATCHED.remove(flag)


def requested_here() -> bool:
    """True when the flag of the enclosing :func:`watched` block got a signal in this process (False outside one).
    Not a collective: a caller shares it with the other ranks itself, in a collective it makes anyway."""
    return bool(_WATCHED) and _WATCHED[-1].requested


_CPU_GROUP: list = []


def _cpu_group():
    """The default group where it is gloo; else one gloo group over all ranks, made once (collectively)."""
    import torch.distributed as dist

    from pretrain.cluster.distributed import collective_timeout

    if dist.get_backend() == "gloo":
        return None
    if not _CPU_GROUP:
        _CPU_GROUP.append(dist.new_group(backend="gloo", timeout=collective_timeout()))
    return _CPU_GROUP[0]


@contextmanager
def worker_signals_blocked() -> Iterator[None]:
    """Block :data:`WORKER_SIGNALS` in this thread meanwhile, so that a worker process forked here starts with them
    blocked (the mask is inherited) and no signal can kill it before :func:`shield_worker` runs.

    This process loses nothing: such a signal goes to another of its threads, or waits until the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # workers forked from another thread get no head start; shield_worker still shields them
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_worker(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: leave SIGTERM, SIGUSR1 and SIGINT to the main process.

    The signals stay blocked in every thread of the worker and one thread takes them: SIGTERM from the parent
    (the DataLoader's and ``multiprocessing``'s way to stop a worker that does not end by itself) exits at once,
    as the DataLoader's own handler does, and once the parent has gone SIGTERM or SIGINT end the worker; any
    other is dropped. Not plain SIG_IGN: the DataLoader would then be unable to stop a stuck worker, and a
    process exiting with its iterator still alive would wait for its workers forever. Children the worker
    starts (``pipe:`` shards) inherit the blocked mask, so they survive a SIGTERM to the whole group too.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    parent = os.getppid()
    creator = multiprocessing.parent_process()  # the main process, also where a fork server forked the worker
    stoppers = {parent} | ({creator.pid} if creator is not None else set())
    threading.Thread(target=_take_worker_signals, args=(parent, stoppers), name="worker-signals",
                     daemon=True).start()


def _take_worker_signals(parent: int, stoppers: set[int]) -> None:
    while True:
        info = signal.sigwaitinfo(WORKER_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid in stoppers:
            os._exit(0)
        orphaned = os.getppid() != parent  # as the DataLoader's watchdog tells
        if orphaned and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            os._exit(128 + info.si_signo)
