"""Hosts made of Linux namespaces on one machine, for multi-node tests: each "host" is a network namespace with its
own address and a private hosts file, and every process started on it also gets its own UTS namespace with the
host's name; the filesystem is shared.

The hosts hang off one bridge in the root namespace that holds the first address of a /24 picked from 198.18.0.0/15
(RFC 2544's range for network tests; a /24 that no interface or route here uses yet), so the root namespace (a
controller daemon, the test's clients) and the hosts reach each other, and nothing else is contacted. A process
started on a host sees /etc/netns/<namespace>/hosts (bind-mounted over /etc/hosts, as `ip netns exec` does), which
names the bridge address and every host.

:meth:`NamespaceHosts.remove` kills every process left in the namespaces, then deletes the namespaces, links and
hosts files; it is safe to call on a half-created set. Needs root, `ip` (iproute2), `nsenter` and `unshare`
(util-linux).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")


class NamespacesUnavailable(RuntimeError):
    """Namespaces, veth pairs or bridges cannot be made here (a test skips, or fails under CI)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NamespacesUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address or route of the root namespace overlaps."""
    used = _ip("-o", "addr").stdout + _ip("route", "show", "table", "all").stdout
    taken = []
    for word in used.split():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    candidates = list(ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken if other.version == 4 and other.prefixlen > 0):
            return net
    raise NamespacesUnavailable("no free /24 left in 198.18.0.0/15")


class NamespaceHosts:
    """Hosts `names` as network namespaces on a private bridge; `gateway`, the root namespace's address on it, is
    `controller` in the hosts files."""

    def __init__(self, names: list[str], controller: str) -> None:
        self.names, self.controller = list(names), controller
        self.tag = f"{os.getpid() % 100000:05d}"  # interface names have at most 15 characters
        self.bridge = f"mxb{self.tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.created: list[str] = []

    def namespace(self, name: str) -> str:
        return f"mx{self.tag}-{name}"

    def address(self, name: str) -> str:
        assert self.subnet is not None
        return str(self.subnet[10 + self.names.index(name) + 1])

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet[1])

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", f"{self.gateway} {self.controller}"]
        lines += [f"{self.address(n)} {n}" for n in self.names]
        return "\n".join(lines) + "\n"

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def create(self) -> NamespaceHosts:
        if os.geteuid() != 0:
            raise NamespacesUnavailable("network namespaces need root")
        missing = [p for p in ("ip", "nsenter", "unshare") if shutil.which(p) is None]
        if missing:
            raise NamespacesUnavailable(f"missing {', '.join(missing)} (apt-get install iproute2 util-linux)")
        self.subnet = _free_subnet()
        prefix = self.subnet.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        self.created.append("bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        hosts = self.hosts_file()
        for i, name in enumerate(self.names):
            ns, veth = self.namespace(name), f"mxv{self.tag}{i}"
            _ip("netns", "add", ns)
            self.created.append(ns)
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text(hosts)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(name)}/{prefix}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def remove(self) -> None:
        """Kill every process in the namespaces, delete them, their links and hosts files (idempotent)."""
        for name in self.names:
            ns = self.namespace(name)
            if (NETNS_RUN / ns).exists():
                for _ in range(20):
                    pids = self.pids(name)
                    if not pids:
                        break
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.1)
                _ip("netns", "del", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        for i in range(len(self.names)):  # a freed namespace takes its veth pair along, but not at once
            _ip("link", "del", f"mxv{self.tag}{i}", check=False)
        _ip("link", "del", self.bridge, check=False)
        self.created.clear()

    # ---- processes ---------------------------------------------------------------------------------------------
    def argv(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run on host `name`: in its network namespace, with its own host name and hosts file.

        (`nsenter --net` rather than `ip netns exec`, which also mounts a fresh /sys without the cgroup tree that
        slurmd needs; the hosts file is bind-mounted the same way, in a mount namespace of its own.)"""
        script = 'mount --bind "$1" /etc/hosts && hostname "$0" && shift && exec "$@"'
        return ["nsenter", f"--net={NETNS_RUN / self.namespace(name)}", "unshare", "--uts", "--mount", "sh", "-c",
                script, name, str(NETNS_ETC / self.namespace(name) / "hosts"), *argv]

    def pids(self, name: str) -> list[int]:
        """Every process in host `name`'s network namespace."""
        try:
            target = os.stat(NETNS_RUN / self.namespace(name)).st_ino
        except FileNotFoundError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.stat(entry / "ns" / "net").st_ino == target:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found
