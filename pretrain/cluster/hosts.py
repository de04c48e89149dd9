"""Where the ranks run, checked and shown before the process group forms.

- :func:`check_master`: a MASTER_ADDR that does not resolve is one line naming it in seconds (torch's TCPStore
  would retry it for the whole rendezvous timeout).
- :func:`check_loopback_hostname`: on a job over several nodes, a node name that resolves to a loopback address
  (Debian's `127.0.1.1 <hostname>` line in /etc/hosts) makes Gloo advertise that address to the other nodes, which
  then fail with "Gloo connectFullMesh failed ... Connection refused, remote=[127.0.1.1]"; one line says so.
- :func:`log_layout`: rank 0's line with the world size, ranks per host, master and backend, and one line per node
  from its first local rank.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections import defaultdict
from typing import TYPE_CHECKING

from pretrain.cluster.errors import DistributedSetupError

if TYPE_CHECKING:
    from pretrain.cluster.distributed import DistEnv

log = logging.getLogger(__name__)


def check_master(env: DistEnv) -> None:
    """Refuse a MASTER_ADDR that does not resolve here (one line naming it)."""
    if env.world_size == 1:
        return
    try:
        socket.getaddrinfo(env.master_addr, env.master_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise DistributedSetupError(
            f"MASTER_ADDR={env.master_addr} does not resolve on {socket.gethostname()} ({reason}); set MASTER_ADDR "
            f"to the first node's name or address as every node resolves it") from None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_loopback_hostname(env: DistEnv, hostname: str | None = None) -> None:
    """On a job over several nodes, refuse a node name that resolves to a loopback address, unless
    GLOO_SOCKET_IFNAME picks the interface (Gloo would advertise the loopback address to the other nodes)."""
    if env.local_world_size >= env.world_size or os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    hostname = hostname or socket.gethostname()
    try:
        address = socket.gethostbyname(hostname)
    except OSError:
        return  # Gloo then falls back to the interface of the master's route
    if _is_loopback(address):
        raise DistributedSetupError(
            f"this node's name {hostname} resolves to {address}, a loopback address (a '{address} {hostname}' line "
            f"in /etc/hosts?): the other nodes could not reach it. Make {hostname} resolve to the address the other "
            f"nodes reach, or set GLOO_SOCKET_IFNAME to the interface that reaches MASTER_ADDR={env.master_addr}")


def layout_lines(env: DistEnv, hosts: list[str]) -> tuple[str, dict[str, list[int]]]:
    """Rank 0's summary line and the ranks of each host, from every rank's host name (in rank order)."""
    per_host: dict[str, list[int]] = defaultdict(list)
    for rank, host in enumerate(hosts):
        per_host[host].append(rank)
    nodes = ", ".join(f"{host} (ranks {_ranks(ranks)})" for host, ranks in per_host.items())
    line = (f"layout: world size {env.world_size} on {len(per_host)} node(s): {nodes}; master "
            f"{env.master_addr}:{env.master_port}; backend {env.backend}; launcher {env.launcher}")
    return line, dict(per_host)


def _ranks(ranks: list[int]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)) else \
        ",".join(map(str, ranks))


def log_layout(env: DistEnv, hosts: list[str]) -> None:
    """The start-up lines, from every rank's host name (`hosts`, gathered once the process group is up)."""
    line, per_host = layout_lines(env, hosts)
    if env.rank == 0:
        log.info("%s", line)
    if env.local_rank == 0:  # one line per node, whatever its log level
        host = hosts[env.rank]
        print(f"node {host}: ranks {_ranks(per_host[host])} of {env.world_size}, device {env.device.type}, "
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')} OpenMP threads per rank", file=sys.stderr, flush=True)
