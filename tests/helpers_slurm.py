"""A private single-node Slurm cluster for tests: its own munged, slurmctld and slurmd, all under one directory.

Everything the daemons use lies under ``root``: slurm.conf, the munge key and socket, state and spool directories,
pid and log files; the ports are free ones picked at start. Several such clusters (two engineers' test runs) can run
on one machine side by side, and none touches a system-wide Slurm. The daemons run in the foreground as children
of the test process; :meth:`SlurmCluster.stop` cancels every job, stops the daemons and kills whatever the jobs
left behind (slurmstepd and its tasks carry this cluster's ``SLURM_CONF`` in their environment).

Needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) and root: slurmd starts jobs as root here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")
# Environment that would steer a job away from this cluster or from Slurm's own rank variables.
FOREIGN_ENV = re.compile(r"^(SLURM_|SBATCH_|SRUN_|SALLOC_)|^(RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|MASTER_ADDR|"
                         r"MASTER_PORT|CUDA_VISIBLE_DEVICES)$")


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed here, or its daemons cannot start (a test skips, or fails under CI)."""


def missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_name() -> str:
    """The short host name: slurmd finds its node by it, and jobs' tasks resolve it for the master address."""
    return socket.gethostname().split(".")[0]


def parse_job(line: str) -> dict[str, str]:
    """`scontrol -o show job` (one line of KEY=VALUE fields) as a dict; values with spaces keep their first word."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9:/_]*)=(\S*)", line))


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.25,
             describe: Callable[[], str] | None = None) -> object:
    """Poll `check` until it returns something truthy; fail with `what` (and `describe()`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n{describe()}" if describe else ""))
        time.sleep(interval)


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = root
        self.cpus = cpus or os.cpu_count() or 1
        self.node = node_name()
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.logs = root / "log"
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- setup -------------------------------------------------------------------------------------------------
    def _write_munge_key(self) -> Path:
        key_dir = self.root / "munge-key"
        key_dir.mkdir(mode=0o700, parents=True)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)  # munged refuses a key that others (or the group) can read
        return key

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        r = self.root
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.parent.mkdir(parents=True)
        self.conf.write_text(f"""\
# A private single-node test cluster (tests/helpers_slurm.py); every path and port is its own.
ClusterName=t{ctld_port}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s, at least 5)
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this container: processes are tracked by parent pid, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# look at pending jobs (a requeued job's begin time passing) every second, not every minute
SchedulerParameters=sched_interval=1
ReturnToService=2
# SIGTERM to SIGKILL when a job ends (scancel, requeue): the time the ranks have to write their checkpoint
KillWait=60
# keep ended jobs' records, so that their final state can be read
MinJobAge=3600
InactiveLimit=0
SlurmdTimeout=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for this cluster's clients (and, passed on by sbatch, for its jobs)."""
        env = {k: v for k, v in os.environ.items() if not FOREIGN_ENV.search(k)}
        env.update(SLURM_CONF=str(self.conf), **extra)
        return env

    def start(self, timeout: float = 60) -> SlurmCluster:
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(f"Slurm is not installed (missing {', '.join(missing)}); "
                                   "apt-get install slurm-wlm munge, as .ci/run does")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster's slurmd must run as root (it starts the jobs as root)")
        for sub in ("state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True)
        self.munge_socket.parent.mkdir(mode=0o755)
        key = self._write_munge_key()
        ctld_port, slurmd_port = free_ports(2)
        self._write_conf(ctld_port, slurmd_port)
        env = self.env()
        m = self.munge_socket.parent
        # --force: munged insists that every directory above its socket be searchable by all, and pytest's base
        # temp dir is private (0700); all clients run as root here, so the socket is reachable.
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                               f"--log-file={self.logs}/munged.log"], env)
        self._wait_ready("munged", lambda: self.munge_socket.exists(), timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], env)
        self._wait_ready("slurmctld", lambda: self._run("scontrol", "ping", check=False).returncode == 0, timeout)
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)], env)
        self._wait_ready("slurmd", lambda: self.node_state() in ("IDLE", "MIXED", "ALLOCATED"), timeout)
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out = open(self.logs / f"{name}.stdout", "wb")  # noqa: SIM115 (lives as long as the daemon)
        self.procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _wait_ready(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.procs[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                       else f"not ready in {timeout:.0f} s")
                raise SlurmUnavailable(f"{name} {why}:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 25) -> str:
        text = []
        for path in (self.logs / f"{name}.log", self.logs / f"{name}.stdout"):
            if path.is_file():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    # ---- teardown ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill what the jobs left behind. Safe to call more than once."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """slurmstepd daemonizes away from slurmd; it and its tasks carry this cluster's SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ---- clients -----------------------------------------------------------------------------------------------
    def _run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, env=env or self.env(), cwd=cwd, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def command(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        return self._run(*argv, env=env, cwd=cwd, check=check)

    def node_state(self) -> str:
        proc = self._run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False)
        return proc.stdout.strip().rstrip("*~#!%$@^-").upper() if proc.returncode == 0 else ""

    def job(self, job_id: str) -> dict[str, str]:
        """The job's fields as `scontrol -o show job` gives them (JobState, Restarts, ExitCode, ...)."""
        return parse_job(self._run("scontrol", "-o", "show", "job", job_id).stdout)
