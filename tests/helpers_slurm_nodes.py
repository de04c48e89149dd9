"""A private multi-node Slurm cluster on one machine: each node a network + UTS namespace (tests/helpers_netns.py)
with its own `slurmd -N <node>`, spool directory and pid file; slurmctld and munged in the root namespace.

slurmctld listens on the bridge's address (the nodes' route to it); munged's socket is a file under the cluster's
directory, which every namespace reaches (the filesystem is shared, only /etc/hosts differs). Jobs started by a
node's slurmd run in that node's namespaces, so their tasks see the node's host name and address, resolve the other
nodes through the node's hosts file, and talk to each other over the bridge. Everything else (ports, state, logs,
teardown of jobs and leftovers) is :class:`tests.helpers_slurm.SlurmCluster`'s.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.helpers_netns import NamespaceHosts
from tests.helpers_slurm import SlurmCluster, SlurmUnavailable, free_ports, missing_programs


class MultiNodeSlurm(SlurmCluster):
    """Nodes `names`, `cpus` CPUs each (enough for the tasks a test puts on one node)."""

    def __init__(self, root: Path, names: tuple[str, ...] = ("n1", "n2"), cpus: int = 2) -> None:
        super().__init__(root, cpus)
        self.names = list(names)
        self.hosts = NamespaceHosts(self.names, self.node)  # slurmctld runs here, under this host's name

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        super()._write_conf(ctld_port, slurmd_port)
        text = self.conf.read_text()
        single = [line for line in text.splitlines() if line.startswith(("NodeName=", "PartitionName="))]
        nodes = [f"NodeName={n} NodeAddr={self.hosts.address(n)} CPUs={self.cpus} RealMemory=1000 State=UNKNOWN"
                 for n in self.names]
        text = text.replace(f"SlurmctldHost={self.node}(127.0.0.1)",
                            f"SlurmctldHost={self.node}({self.hosts.gateway})")
        # every node its own spool directory and pid file (%n: the node's name)
        text = text.replace(f"SlurmdSpoolDir={self.root}/spool", f"SlurmdSpoolDir={self.root}/spool/%n")
        text = text.replace(f"SlurmdPidFile={self.root}/run/slurmd.pid", f"SlurmdPidFile={self.root}/run/slurmd-%n.pid")
        text = text.replace(f"SlurmdLogFile={self.logs}/slurmd.log", f"SlurmdLogFile={self.logs}/slurmd-%n.log")
        # the nodes' CPUs as configured, even beyond this machine's cores (two nodes share them anyway)
        text = text.replace(single[0], "SlurmdParameters=config_overrides\n" + "\n".join(nodes))
        text = text.replace(single[1], f"PartitionName=test Nodes={','.join(self.names)} Default=YES "
                                       "MaxTime=INFINITE State=UP")
        self.conf.write_text(text)

    def start(self, timeout: float = 60) -> MultiNodeSlurm:
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(f"Slurm is not installed (missing {', '.join(missing)}); "
                                   "apt-get install slurm-wlm munge, as .ci/run does")
        self.hosts.create()
        for sub in ("state", "run", "log", *(f"spool/{n}" for n in self.names)):
            (self.root / sub).mkdir(parents=True)
        self.munge_socket.parent.mkdir(mode=0o755)
        key = self._write_munge_key()
        ctld_port, slurmd_port = free_ports(2)
        self._write_conf(ctld_port, slurmd_port)
        env = self.env()
        m = self.munge_socket.parent
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                               f"--log-file={self.logs}/munged.log"], env)
        self._wait_ready("munged", lambda: self.munge_socket.exists(), timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], env)
        self._wait_ready("slurmctld", lambda: self._run("scontrol", "ping", check=False).returncode == 0, timeout)
        for n in self.names:
            self._spawn(f"slurmd-{n}", self.hosts.argv(n, ["slurmd", "-D", "-N", n, "-f", str(self.conf)]), env)
        for n in self.names:
            self._wait_ready(f"slurmd-{n}", lambda n=n: self.node_state(n) in ("IDLE", "MIXED", "ALLOCATED"),
                             timeout)
        return self

    def node_state(self, name: str | None = None) -> str:
        proc = self._run("sinfo", "-h", "-n", name or self.names[0], "-o", "%T", check=False)
        return proc.stdout.strip().rstrip("*~#!%$@^-").upper() if proc.returncode == 0 else ""

    def log_tail(self, name: str, lines: int = 25) -> str:
        if name.startswith("slurmd-"):
            path = self.logs / f"{name}.log"
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""
        return super().log_tail(name, lines)

    def stop(self) -> None:
        """Cancel the jobs, stop every daemon, kill what is left in the nodes, remove the namespaces."""
        try:
            if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
                self._run("scancel", "--user=root", check=False)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self._run("squeue", "-h", "-o", "%i",
                                                                 check=False).stdout.strip():
                    time.sleep(0.5)
            for name in [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]:
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            self._kill_leftovers()
        finally:
            self.hosts.remove()
