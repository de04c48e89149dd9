"""A rank that dies (kill -9 of its processes) or goes silent (SIGSTOP of its processes: a lost node sends no
reset) in a real 2-rank run: the surviving rank leaves its collective within train.collective_timeout_s, says so in
one line and exits with PEER_LOST_EXIT_CODE, which launch/slurm/run.sh requeues; the checkpoint stays.

The ranks run as srun starts them (one task each, rank from SLURM_*), without a launcher that would kill the
survivor itself when its peer dies (the deepspeed launcher does), so the survivor's own exit is what is measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pretrain.cluster.distributed import PEER_LOST_EXIT_CODE, free_port
from tests.helpers_runs import ROOT, build_digits, command, env, write_config

PRETRAIN = "launch/pretrain.py"
STARTUP = 300  # seconds for 2 ranks to reach their first steps on a busy 2-core machine
TIMEOUT_S = 20  # train.collective_timeout_s in these runs
PROGRESS = re.compile(r"^step (\d+)/1000 ", re.MULTILINE)
LOST = re.compile(r"\[rank 0\] lost contact with another rank at step \d+ .*exiting with 76, the job resumes from "
                  r"step-\d+")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_digits(tmp_path_factory.mktemp("digits") / "train")


def tree(pid: int) -> list[psutil.Process]:
    """A rank and its DataLoader workers."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def start_tasks(tmp_path: Path, shards: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    overrides = {"data.train": str(shards), "data.workers": 1, "train.steps": 1000, "logging.every_steps": 1,
                 "logging.image_every_steps": 0, "checkpoint.every_steps": 2, "train.collective_timeout_s": TIMEOUT_S}
    cfg = str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", overrides))
    base = {k: v for k, v in env().items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}}
    base |= {"SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost",
             "SLURM_JOB_ID": "4343", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    logs, tasks = [tmp_path / f"task{r}.log" for r in range(2)], []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            tasks.append(subprocess.Popen(command(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run")),
                                          cwd=ROOT, env=base | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return tasks, logs


def wait_for_step(log: Path, tasks: list[subprocess.Popen], at_least: int) -> None:
    deadline = time.monotonic() + STARTUP
    while True:
        steps = [int(s) for s in PROGRESS.findall(log.read_text(errors="replace"))]
        if steps and steps[-1] >= at_least:
            return
        assert all(t.poll() is None for t in tasks), "a rank ended early:\n" + log.read_text()[-5000:]
        assert time.monotonic() < deadline, "no progress:\n" + log.read_text()[-5000:]
        time.sleep(0.05)


def kill_all(tasks: list[subprocess.Popen]) -> None:
    for task in tasks:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(task.pid, signal.SIGKILL)
        task.wait()


@pytest.mark.parametrize("how", ["kill-9", "stopped"])
@pytest.mark.timeout(STARTUP + TIMEOUT_S * 3 + 120)
def test_the_survivor_of_a_lost_rank_exits_within_the_timeout_for_a_requeue(tmp_path, shards, how):
    tasks, logs = start_tasks(tmp_path, shards)
    try:
        wait_for_step(logs[0], tasks, at_least=3)  # the checkpoint of step 2 is written
        lost = tree(tasks[1].pid)
        for p in lost:
            p.send_signal(signal.SIGKILL if how == "kill-9" else signal.SIGSTOP)
        start = time.monotonic()
        code = tasks[0].wait(timeout=TIMEOUT_S * 3)
        elapsed = time.monotonic() - start
    finally:
        kill_all(tasks)
    output = logs[0].read_text(errors="replace")
    assert code == PEER_LOST_EXIT_CODE, output[-5000:]
    assert LOST.search(output), output[-5000:]
    bound = 10 if how == "kill-9" else TIMEOUT_S + 15  # a closed connection is seen at once; silence at the timeout
    assert elapsed < bound, f"{how}: the survivor exited {elapsed:.1f} s after the loss (bound {bound} s)"
    print(f"\n{how}: survivor exited {elapsed:.1f} s after the loss (collective timeout {TIMEOUT_S} s)")
