"""SIGTERM to every process of a real 2-rank run (launcher, ranks, DataLoader workers), as Slurm sends it on
preemption, `scontrol requeue` and `scancel`, and as `kill -TERM -PGID` does: the ranks checkpoint the step they
were in and exit 75; `--resume auto` continues from there.

Before the workers left these signals to their main process, they died of it and every rank failed with
"DataLoader worker (pid N) is killed by signal: Terminated", with no checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pretrain.cluster.distributed import free_port
from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE
from tests.helpers_runs import ROOT, command, env, failure, run, scalars, write_config

PRETRAIN = "launch/pretrain.py"
STEPS = 1000  # a long run: the signal always lands in the middle of it
STARTUP = 240  # seconds for 2 ranks to reach their first steps on a busy 2-core machine (DeepSpeed set-up, imports)
PREEMPTED = re.compile(r"preempted: checkpoint at step (\d+) written")
PROGRESS = re.compile(rf"^step (\d+)/{STEPS} ", re.MULTILINE)


def config(tmp_path: Path, shards: Path) -> str:
    overrides = {"data.train": str(shards), "data.workers": 2, "train.steps": STEPS, "logging.every_steps": 1,
                 "logging.image_every_steps": 0, "checkpoint.every_steps": 1000}  # the only save: the preemption's
    return str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", overrides))


def group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter(["name", "status"]):  # read while iterating: p.info holds them
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except ProcessLookupError:
            pass
    return out


def wait_for_step(log: Path, procs: list[subprocess.Popen], at_least: int) -> int:
    """Block until rank 0's progress line shows step `at_least` (the loop is running, every worker has served a
    step); returns the last step shown."""
    deadline = time.monotonic() + STARTUP
    while True:
        steps = [int(s) for s in PROGRESS.findall(log.read_text(errors="replace"))]
        if steps and steps[-1] >= at_least:
            return steps[-1]
        assert all(p.poll() is None for p in procs), "the run ended early:\n" + log.read_text()[-5000:]
        assert time.monotonic() < deadline, "no progress:\n" + log.read_text()[-5000:]
        time.sleep(0.05)


def wait_until_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while group(pgid):
        assert time.monotonic() < deadline, f"still running: {[(p.pid, p.info['name']) for p in group(pgid)]}"
        time.sleep(0.1)


def kill_group(pgid: int) -> None:
    """Nothing of a run outlives its test (after a failure; a passing test finds the group gone)."""
    for p in group(pgid):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def preempted_step(run_dir: Path, output: str, seen: int) -> int:
    """The step whose checkpoint the preemption wrote, checked against `latest` and meta.json."""
    assert "killed by signal" not in output and "exited unexpectedly" not in output, output[-5000:]
    handled = [int(s) for s in PREEMPTED.findall(output)]
    assert len(handled) == 1, output[-5000:]
    step = handled[0]
    assert seen <= step < STEPS, (seen, step)
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{step:08d}"
    assert json.loads((checkpoints / f"step-{step:08d}" / "meta.json").read_text())["step"] == step
    assert not (run_dir / "final.safetensors").exists()
    return step


def signal_every_process(pgid: int) -> None:
    """What Slurm does: SIGTERM to each process of the step, DataLoader workers included."""
    members = group(pgid)
    workers = [p for p in members if p.info["name"] == "pt_data_worker"]  # torch names its DataLoader workers
    assert len(workers) == 4, [(p.pid, p.info["name"]) for p in members]  # 2 ranks x data.workers
    os.killpg(pgid, signal.SIGTERM)


@pytest.mark.timeout(STARTUP * 2 + 120)
def test_sigterm_to_the_deepspeed_launchers_whole_group_checkpoints_and_resumes(tmp_path, shards):
    cfg, run_dir, log = config(tmp_path, shards), tmp_path / "run", tmp_path / "run.log"
    with log.open("w") as out:
        job = subprocess.Popen(command(PRETRAIN, 2, "--config", cfg, "--run-dir", str(run_dir)), cwd=ROOT,
                               env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen = wait_for_step(log, [job], at_least=3)
        signal_every_process(job.pid)
        # DeepSpeed's runner (`deepspeed`) sets no SIGTERM handler for a local run, so the signal ends it at once
        # and its status cannot be 75; its child, launch.py, passes SIGTERM on to the ranks and waits 30 s for them.
        assert job.wait(timeout=30) == -signal.SIGTERM
        wait_until_gone(job.pid, timeout=60)
    finally:
        kill_group(job.pid)
    stopped_at = preempted_step(run_dir, log.read_text(errors="replace"), seen)

    end = stopped_at + 3  # a shorter run from here on: the resumed part stays a few steps
    resumed = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(run_dir), "--resume", "auto",
                  "--set", f"train.steps={end}", timeout=STARTUP + 60)
    assert resumed.returncode == 0, failure(resumed)
    assert f"resumed from step {stopped_at}" in resumed.stdout + resumed.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{end:08d}"
    assert (run_dir / "final.safetensors").is_file()
    logged = [step for step, _ in scalars(run_dir)["train/loss"]]
    assert sorted(logged) == list(range(1, end + 1)), logged  # 1..N before, N+1..end after: no gap, no repeat


@pytest.mark.timeout(STARTUP + 120)
def test_sigterm_to_every_process_of_a_slurm_step_makes_each_task_exit_75(tmp_path, shards):
    """The ranks as srun starts them (one task each, rank from SLURM_*); this test stands in for srun."""
    cfg, run_dir = config(tmp_path, shards), tmp_path / "run"
    base = {k: v for k, v in env().items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}}
    base |= {"SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost",
             "SLURM_JOB_ID": "4242", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    logs, tasks = [tmp_path / f"task{r}.log" for r in range(2)], []
    try:
        for rank, log in enumerate(logs):
            with log.open("w") as out:
                task_env = base | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
                where = {"process_group": tasks[0].pid if tasks else 0}  # one new group for the step
                tasks.append(subprocess.Popen(command(PRETRAIN, 1, "--config", cfg, "--run-dir", str(run_dir),
                                                      "--resume", "auto"),
                                              cwd=ROOT, env=task_env, stdout=out, stderr=subprocess.STDOUT, **where))
        seen = wait_for_step(logs[0], tasks, at_least=3)
        signal_every_process(tasks[0].pid)
        codes = [t.wait(timeout=60) for t in tasks]
        wait_until_gone(tasks[0].pid, timeout=30)  # the workers too
    finally:
        if tasks:
            kill_group(tasks[0].pid)
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    assert codes == [PREEMPTED_EXIT_CODE] * 2, output[-5000:]  # what run.sh answers with `scontrol requeue`
    preempted_step(run_dir, output, seen)
