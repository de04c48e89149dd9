"""Who this process is in a distributed run, and how to join the process group.

:func:`detect_env` reads the launcher's environment variables: ``deepspeed`` and ``torchrun`` set RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Slurm's ``srun`` (one task per GPU) sets SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS and a node list; a plain ``python`` is rank 0 of 1. The torch variables win when
both are present (``deepspeed`` run inside a Slurm allocation). :func:`init_distributed` turns the result
into the variables ``torch.distributed`` expects and joins the group through DeepSpeed.

The ``deepspeed`` launcher appends ``--local_rank=N`` to the script's arguments; entry points call
:func:`add_launcher_arguments` so their parser accepts and ignores it (the rank comes from the environment).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pretrain.cluster.errors import DistributedSetupError, RankFailedError
from pretrain.cluster.hostlist import expand_nodelist, parse_tasks_per_node
from pretrain.cluster.hosts import check_loopback_hostname, check_master, log_layout

DEFAULT_MASTER_PORT = 29500
# Ports derived from a Slurm job id: below Linux's ephemeral range (32768-60999), above common services.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000
_TORCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


# EX_TEMPFAIL + 1: a rank lost contact with another one (it died, its node was lost, or it hung past the collective
# timeout); launch/slurm/run.sh requeues the job, which resumes from the last checkpoint.
PEER_LOST_EXIT_CODE = 76
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
# How gloo and NCCL report a peer that is gone or silent (torch raises them as RuntimeError / DistBackendError).
PEER_LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
                     "Socket Timeout", "NCCL communicator was aborted")
_TIMEOUT: list[timedelta] = []


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run. ``node_rank`` is None when the launcher does not tell."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int | None
    master_addr: str
    master_port: int
    backend: str
    device: torch.device
    launcher: str

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the process that writes logs and files shared by the run."""
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_job_port(job_id: str) -> int:
    """The port all tasks of a Slurm job derive from its id, in [SLURM_PORT_BASE, +SLURM_PORT_SPAN)."""
    digits = "".join(ch for ch in job_id if ch.isdigit())
    if not digits:
        raise ValueError(f"SLURM_JOB_ID={job_id!r} has no digits to derive a port from")
    return SLURM_PORT_BASE + int(digits) % SLURM_PORT_SPAN


def _from_torch_env(environ: Mapping[str, str]) -> dict:
    missing = [name for name in _TORCH_VARS if name not in environ]
    if missing:
        present = [name for name in _TORCH_VARS if name in environ]
        raise ValueError(
            f"incomplete launcher environment: {', '.join(present)} set but {', '.join(missing)} missing"
        )
    world_size = _int(environ, "WORLD_SIZE")
    if "LOCAL_WORLD_SIZE" in environ:  # torchrun
        local_world_size = _int(environ, "LOCAL_WORLD_SIZE")
        node_rank, launcher = environ.get("GROUP_RANK"), "torchrun"
    elif "CROSS_SIZE" in environ:  # deepspeed: CROSS_SIZE nodes, CROSS_RANK this node
        local_world_size = world_size // _int(environ, "CROSS_SIZE")
        node_rank, launcher = environ.get("CROSS_RANK"), "deepspeed"
    else:  # another launcher: assume one node
        local_world_size, node_rank, launcher = world_size, None, "env"
    if world_size > 1 and "MASTER_ADDR" not in environ:
        raise ValueError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set")
    return dict(
        rank=_int(environ, "RANK"),
        local_rank=_int(environ, "LOCAL_RANK"),
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=None if node_rank is None else int(node_rank),
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else DEFAULT_MASTER_PORT,
        launcher=launcher,
    )


def _from_slurm_env(environ: Mapping[str, str]) -> dict:
    step_tasks = "SLURM_STEP_NUM_TASKS" in environ  # this srun's tasks, which may be fewer than the job's
    world_size = _int(environ, "SLURM_STEP_NUM_TASKS" if step_tasks else "SLURM_NTASKS")
    node_rank = _int(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
    # The step's own layout first; then the job's --ntasks-per-node, then the job's layout.
    if "SLURM_STEP_TASKS_PER_NODE" not in environ and "SLURM_NTASKS_PER_NODE" in environ:
        local_world_size = _int(environ, "SLURM_NTASKS_PER_NODE")
    else:
        spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
        per_node = parse_tasks_per_node(spec) if spec else [world_size]
        if node_rank >= len(per_node):
            raise ValueError(f"SLURM_NODEID={node_rank} is beyond the tasks-per-node list {spec!r}")
        local_world_size = per_node[node_rank]
    if "MASTER_ADDR" in environ:
        master_addr = environ["MASTER_ADDR"]
    else:
        names = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        nodelist = next((environ[name] for name in names if name in environ), None)
        if nodelist is None:
            raise ValueError("Slurm task without SLURM_JOB_NODELIST: set MASTER_ADDR to the first node")
        master_addr = expand_nodelist(nodelist, path=environ.get("PATH"))[0]
    if "MASTER_PORT" in environ:
        master_port = _int(environ, "MASTER_PORT")
    elif "SLURM_JOB_ID" in environ:
        master_port = slurm_job_port(environ["SLURM_JOB_ID"])
    else:
        master_port = DEFAULT_MASTER_PORT
    return dict(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=_int(environ, "SLURM_LOCALID"),
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        launcher="slurm",
    )


def _single(environ: Mapping[str, str]) -> dict:
    port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else free_port()
    return dict(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0,
                master_addr=environ.get("MASTER_ADDR", "127.0.0.1"), master_port=port, launcher="single")


def detect_env(environ: Mapping[str, str] | None = None, cuda: bool | None = None) -> DistEnv:
    """Read the launcher's variables from ``environ`` (default ``os.environ``).

    ``cuda`` says whether to use GPUs (default: ``torch.cuda.is_available()``): nccl and
    ``cuda:{local_rank}``, else gloo and the CPU. A single process gets a free port, so two single runs on one
    machine do not collide.
    """
    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if any(name in environ for name in _TORCH_VARS):
        fields = _from_torch_env(environ)
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        fields = _from_slurm_env(environ)
    else:
        fields = _single(environ)
    if not 0 <= fields["rank"] < fields["world_size"]:
        raise ValueError(f"rank {fields['rank']} is outside world size {fields['world_size']}")
    if not 0 <= fields["local_rank"] < fields["local_world_size"]:
        raise ValueError(
            f"local rank {fields['local_rank']} is outside local world size {fields['local_world_size']}"
        )
    device = torch.device("cuda", fields["local_rank"]) if cuda else torch.device("cpu")
    return DistEnv(backend="nccl" if cuda else "gloo", device=device, **fields)


def check_device(env: DistEnv, device_count: int | None = None) -> None:
    """Refuse a process whose GPU does not exist (more processes per node than GPUs)."""
    if env.device.type != "cuda":
        return
    count = torch.cuda.device_count() if device_count is None else device_count
    if env.local_rank >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise DistributedSetupError(
            f"local rank {env.local_rank} needs cuda:{env.local_rank} but this node shows {count} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={visible}); start at most {count} processes per node, one per GPU, "
            f"without binding one GPU per task"
        )


def collective_timeout() -> timedelta:
    """The timeout the process group was made with (for groups made later, e.g. a gloo group on NCCL jobs)."""
    return _TIMEOUT[0] if _TIMEOUT else timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S)


def is_peer_lost(err: BaseException) -> bool:
    """True for the error a collective raises when another rank died, its node went away or it stayed silent past
    the collective timeout (only meaningful with several ranks)."""
    return (isinstance(err, RuntimeError) and not isinstance(err, RankFailedError)
            and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1 and any(marker in str(err) for marker in PEER_LOST_MARKERS))


def init_distributed(env: DistEnv, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> None:
    """Export ``env`` as the torch variables, pick this process's GPU and join the group via DeepSpeed.

    ``timeout_s`` bounds every collective (and the rendezvous): a rank whose peer died or hangs raises then instead
    of waiting for torch's default (10-30 minutes)."""
    check_device(env)
    _TIMEOUT[:] = [timedelta(seconds=timeout_s)]
    # Groups made later without a timeout (DeepSpeed's data-parallel group, in which the gradients are all-reduced)
    # take torch's module default (30 minutes), not the default group's: make that default ours.
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = collective_timeout()
    if isinstance(getattr(distributed_c10d, "default_pg_nccl_timeout", None), timedelta):
        distributed_c10d.default_pg_nccl_timeout = collective_timeout()
    os.environ.update(
        RANK=str(env.rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    check_master(env)  # before the rendezvous, which would retry an unknown name for the whole timeout
    check_loopback_hostname(env)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    else:
        share_cpu_threads(env)
    import deepspeed  # imported here: it takes seconds and probes the machine

    deepspeed.init_distributed(dist_backend=env.backend, verbose=False, timeout=collective_timeout())
    if env.device.type == "cpu":
        release_shm_name(env)
    log_layout(env, gather(socket.gethostname()))


def shm_buffer_path(env: DistEnv) -> Path:
    """The /dev/shm file DeepSpeed's CPU all-reduce creates for this rank (named by uid, master address and port)."""
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{env.master_addr}_{env.master_port}_{env.rank}"


def release_shm_name(env: DistEnv) -> None:
    """Unlink this rank's DeepSpeed shared-memory buffer name once every rank has mapped every buffer.

    DeepSpeed never unlinks them: each run left 66 MiB per rank in /dev/shm (RAM) for good, and a machine that ran
    a few hundred short jobs ran out of memory. The mappings stay valid; only the names go.
    """
    barrier()  # DeepSpeed's initialize returns once this rank has opened every peer's buffer
    try:
        shm_buffer_path(env).unlink()
    except FileNotFoundError:  # DeepSpeed's shared-memory op is not in use (or another version names it otherwise)
        pass


def share_cpu_threads(env: DistEnv) -> None:
    """On a CPU, give each local rank its share of the cores (unless OMP_NUM_THREADS says otherwise).

    Ranks that each start one thread per core oversubscribe the machine; OpenMP's spinning threads then slow
    every step many times over (measured: 12x on 2 cores with 2 ranks).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))


def several_ranks() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing to wait for without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group in order (all ranks, then destroy), so no communication thread outlives Python.

    Exiting with the group still up let a gloo/shared-memory thread be torn down while joinable ("terminate called
    without an active exception", SIGABRT) after a run had finished its work.
    """
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """Accept (and hide) the ``--local_rank``/``--local-rank`` argument ``deepspeed`` passes to scripts."""
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
