"""DataLoader workers of the train and eval loaders leave SIGTERM, SIGUSR1 and SIGINT to their main process, and
still end: when their DataLoader shuts them down, when the process exits with a live iterator, when the main
process is SIGKILLed (the DataLoader's parent watchdog), on Ctrl-C of the main process, and on SIGKILL.

Real worker processes throughout; the signals come from another process, as Slurm's and `kill -TERM -PGID` do
(SIGTERM from a worker's own parent is how its DataLoader stops it, and still does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE, WORKER_SIGNALS, PreemptionFlag, worker_signals_blocked
from pretrain.data import build_eval_loader, build_train_loader, eval_transform, load_manifest, train_transform
from tests.helpers_shards import write_dataset

HELPER = Path(__file__).resolve().parent / "helpers_signal_loader.py"
SHIELDED = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT}
START = 120  # seconds for a helper process to import torch and serve its first batch on a busy machine


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_dataset(str(tmp_path_factory.mktemp("shards")), [30, 30])


class Probe:
    """A transform that, on its first call in each process, writes what that process's signal state is."""

    def __init__(self, transform, out: Path):
        self.transform, self.out = transform, out

    def __call__(self, img):
        path = self.out / f"probe-{os.getpid()}.json"
        if not path.exists():
            import threading

            state = {"blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                     "threads": sorted(t.name for t in threading.enumerate())}
            path.write_text(json.dumps(state))
        return self.transform(img)


def signal_from_another_process(pid: int, signum: int) -> None:
    subprocess.run([sys.executable, "-c", f"import os; os.kill({pid}, {int(signum)})"], check=True)


def wait_until_taken(pid: int, timeout: float = 30) -> None:
    """Until `pid` has no signal pending (it took them, or died): what it did with them can then be checked."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields["State"].startswith("Z") or int(fields["ShdPnd"], 16) == int(fields["SigPnd"], 16) == 0:
            return
        assert time.monotonic() < deadline, f"{pid} left signals pending: {fields['ShdPnd']}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_blocking_while_workers_fork_loses_no_signal_of_the_main_process():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with PreemptionFlag() as flag:
        with worker_signals_blocked():
            assert SHIELDED <= signal.pthread_sigmask(signal.SIG_BLOCK, [])  # what a worker forked here inherits
            os.kill(os.getpid(), signal.SIGUSR1)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
        assert flag.received == signal.SIGUSR1  # delivered at the latest when the block ends


def train_batches(manifest: str, transform):
    return build_train_loader(load_manifest(manifest), micro_batch=2, accum=1, rank=0, world_size=1, workers=2,
                              seed=0, transform=transform, shuffle_buffer=4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["train", "eval"])
def test_workers_take_no_sigterm_sigusr1_or_sigint_and_keep_serving(tmp_path, manifest, kind):
    """Each worker reports from inside that the signals are blocked and taken by its signal thread; each then
    gets all three from another process, takes them, lives on and serves the rest of the batches."""
    assert set(WORKER_SIGNALS) == SHIELDED
    if kind == "train":
        loader = train_batches(manifest, Probe(train_transform(16), tmp_path))
        batches = loader
    else:
        loader = build_eval_loader(load_manifest(manifest), batch_size=2, rank=0, world_size=1, workers=2,
                                   transform=Probe(eval_transform(16), tmp_path))
        batches = iter(loader)
    probes: dict[int, dict] = {}
    try:
        seen = [next(batches) for _ in range(4)]  # with 2 workers, each has served a batch
        probes = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in tmp_path.glob("probe-*.json")}
        assert len(probes) == 2 and os.getpid() not in probes, probes
        for probe in probes.values():
            assert SHIELDED <= set(probe["blocked"]), probe  # blocked in the worker...
            assert "worker-signals" in probe["threads"], probe  # ...and taken by its signal thread
        for pid in probes:
            for signum in SHIELDED:
                signal_from_another_process(pid, signum)
        for pid in probes:
            wait_until_taken(pid)
            assert alive(pid), f"worker {pid} died of a signal"
        seen += list(batches) if kind == "eval" else [next(batches) for _ in range(20)]  # the same workers serve on
        assert all(alive(pid) for pid in probes)
        if kind == "eval":  # every sample of the pass arrived
            assert sorted(k for b in seen for k in b["key"]) == [f"s{i:05d}" for i in range(60)]
        else:
            assert [b["step"] for b in seen] == list(range(24))
    finally:
        if kind == "train":
            loader.close()
        else:
            del batches, loader  # persistent workers: they end with their DataLoader
    assert workers_gone(list(probes), timeout=20) == [], "workers still running after their loader was closed"


@pytest.mark.timeout(60)
def test_sigterm_from_the_parent_still_ends_a_worker(tmp_path, manifest):
    """How a DataLoader stops a worker that has not ended 5 s after being told to, and how `multiprocessing` ends
    daemonic children at exit; plain SIG_IGN would lose both."""
    loader = train_batches(manifest, Probe(train_transform(16), tmp_path))
    try:
        next(loader)
        next(loader)
        [pid, *_] = [int(p.stem.split("-")[1]) for p in tmp_path.glob("probe-*.json")]
        os.kill(pid, signal.SIGTERM)
        assert zombie_status(pid) == 0  # the DataLoader's own handler also exits 0 on it
    finally:
        loader.close()


def zombie_status(pid: int, timeout: float = 20) -> int:
    """The exit status of a child that has ended, read without reaping it (its DataLoader does that)."""
    deadline = time.monotonic() + timeout
    while True:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return os.waitstatus_to_exitcode(int(fields[-1]))  # exit_code, as waitpid gives it
        assert time.monotonic() < deadline, f"worker {pid} still running"
        time.sleep(0.02)


def start(manifest: str, mode: str) -> tuple[subprocess.Popen, list[int]]:
    """A main process with a loader and 2 workers, in a new process group; returns it and its workers' pids
    once it has taken its first batch."""
    proc = subprocess.Popen([sys.executable, str(HELPER), manifest, "2", mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        pytest.fail(f"helper did not start: {line!r} {proc.communicate()[1][-3000:]}")
    workers = [int(pid) for pid in line.split()[1:]]
    assert len(workers) == 2, line
    return proc, workers


def end_all(proc: subprocess.Popen, workers: list[int]) -> None:
    for pid in [proc.pid, *workers]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def workers_gone(workers: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in workers if alive(pid)]


@pytest.mark.timeout(START + 60)
def test_sigterm_twice_to_the_whole_group_the_main_process_stops_after_its_batch(manifest):
    """As Slurm and the deepspeed launcher do (a second SIGTERM comes from launch.py): the main process takes its
    next batches from the same workers, then stops with the requeue status; the workers end with it. (The eval
    loader's workers: the first test.)"""
    proc, workers = start(manifest, "stop")
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (PREEMPTED_EXIT_CODE, f"stopped; signal {int(signal.SIGTERM)}\n"), err
        assert workers_gone(workers, timeout=20) == []
    finally:
        end_all(proc, workers)


@pytest.mark.timeout(START + 60)
def test_ctrl_c_of_a_foreground_run_still_stops_it(manifest):
    """The terminal sends SIGINT to the whole foreground group: the main process stops on it at once (a
    KeyboardInterrupt) and its workers end with it."""
    proc, workers = start(manifest, "hold")
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, (proc.returncode, err[-3000:])
        assert workers_gone(workers, timeout=20) == []
    finally:
        end_all(proc, workers)


@pytest.mark.timeout(START + 60)
def test_workers_end_when_their_main_process_is_killed(manifest):
    """SIGKILL leaves no handler to run: the DataLoader's watchdog (a check of the parent every 5 s) ends the
    workers."""
    proc, workers = start(manifest, "hold")
    try:
        proc.kill()
        proc.wait()
        assert workers_gone(workers, timeout=20) == []
    finally:
        end_all(proc, workers)


ORPHAN = """
import ctypes, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from pretrain.cluster.preemption import shield_worker

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below us become our children
r, w = os.pipe()
if os.fork() == 0:  # the worker's parent
    worker = os.fork()
    if worker == 0:
        shield_worker(0)
        os.write(w, b"shielded")
        while True:
            time.sleep(1)
    os.read(r, 8)
    os.write(w, str(worker).encode())
    os._exit(0)
os.wait()  # the worker's parent has gone: the worker is ours now
worker = int(os.read(r, 64))
print("orphaned", flush=True)
sys.stdin.readline()  # the test signals the worker meanwhile
print(os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1]), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 128 + 2)])
def test_an_orphaned_worker_obeys_sigterm_and_sigint_again(signum, status):
    """Once its main process has gone (killed, so its DataLoader could not stop it), a worker stuck where the
    watchdog never looks still ends on `kill PID`; SIGUSR1 stays ignored."""
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "orphaned\n", proc.stderr.read()
        [worker] = psutil.Process(proc.pid).children()
        signal_from_another_process(worker.pid, signal.SIGUSR1)
        wait_until_taken(worker.pid)
        assert alive(worker.pid)
        signal_from_another_process(worker.pid, signum)
        out, err = proc.communicate("go\n", timeout=30)
        assert out == f"{status}\n", err
    finally:
        proc.kill()


@pytest.mark.timeout(START + 60)
def test_a_process_exiting_with_a_live_iterator_does_not_wait_for_its_workers_forever(manifest):
    """multiprocessing ends daemonic children at exit with SIGTERM and then joins them: with workers that ignored
    SIGTERM outright, such a process would never exit."""
    proc, workers = start(manifest, "exit")
    try:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert workers_gone(workers, timeout=5) == []
    finally:
        end_all(proc, workers)
