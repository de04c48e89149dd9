"""The real batch template on a real Slurm: a private single-node cluster (tests/helpers_slurm.py) runs
`launch/slurm/pretrain.sbatch`, submitted with `launch/slurm/submit.sh` as 2 CPU ranks (gloo, no GPU request), on
the demo config and the digits shards.

Pinned: (a) a run completes; (b) `scontrol requeue` mid-run checkpoints at the signal step, Slurm requeues the job
(run.sh does not requeue it again), it resumes from that step and ends with the weights of the uninterrupted run
(a); (c) `scancel` mid-run checkpoints, and the job ends CANCELLED, not requeued; (d) SIGUSR1 to the batch shell and
the tasks right at the start (`scancel --signal=USR1 --full`, what `--signal=B:USR1@300` and the time-limit warning
do) checkpoints, exits 75, run.sh requeues the job, and it completes with the same weights as (a).

Skips only where Slurm is not installed or its daemons cannot start, and not even then under CI=true (.ci/run
installs slurm-wlm and munge): there it fails.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.cluster.distributed import free_port
from tests.helpers_runs import final_weights
from tests.helpers_slurm import SlurmCluster, SlurmUnavailable, wait_for

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
# The same config for every job, so that (a) is the uninterrupted reference of (b) and (d). Checkpoints only on a
# signal and at the end; a progress line every step, to see a run inside its training loop.
SETS = {"train.steps": STEPS, "logging.every_steps": 1, "logging.image_every_steps": 0,
        "checkpoint.every_steps": 1000}
# JobState values that end a job for good (a requeue passes through COMPLETING and PENDING, never one of these).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT = 300
STEP_LINE = re.compile(r"^step (\d+)/" + str(STEPS) + r" ", re.M)
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            c.start()
        except SlurmUnavailable as e:
            if IN_CI:
                pytest.fail(f"CI=true and no Slurm test cluster: {e}")
            pytest.skip(f"no Slurm test cluster: {e}")
        yield c
    finally:
        c.stop()


class Job:
    """One submission of launch/slurm/pretrain.sbatch (through submit.sh), and what can be read of it."""

    def __init__(self, cluster: SlurmCluster, shards: Path, tmp: Path, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.run_dir = tmp / "run"
        sets = {"data.train": str(shards), **SETS}
        env = cluster.env(CONFIG="configs/demo.yaml", RUN_DIR=str(self.run_dir), PYTHON=sys.executable,
                          EXTRA_ARGS=" ".join(f"--set {k}={v}" for k, v in sets.items()),
                          GPUS_PER_NODE="0", TASKS_PER_NODE="2", NODES="1", CPUS_PER_TASK="1", TIME="00:15:00",
                          # the job id's port (20000 + id) would be the same in two test clusters side by side
                          MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
        out = cluster.command("bash", "launch/slurm/submit.sh", "pretrain", f"--job-name={name}",
                              f"--output={tmp}/%x-%j.out", "--parsable", env=env, cwd=ROOT)
        self.id = out.stdout.strip().split(";")[0]
        assert self.id.isdigit(), out.stdout + out.stderr
        self.output = tmp / f"{name}-{self.id}.out"

    def info(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.is_file() else ""

    def describe(self) -> str:
        lines = [line for line in self.log().splitlines() if not re.match(r"^(\[rank\d\]:)?\s", line)]
        return (f"--- job {self.id}: {self.info()}\n--- output (last 60 lines, tracebacks folded)\n"
                + "\n".join(lines[-60:]) + f"\n--- slurmctld.log\n{self.cluster.log_tail('slurmctld', 15)}")

    def wait_running(self) -> None:
        wait_for(f"job {self.id} to run", lambda: self.info().get("JobState") == "RUNNING", JOB_TIMEOUT,
                 describe=self.describe)

    def wait_step(self, step: int) -> int:
        """Wait until the run has logged step `step` or later (it is inside its training loop); the step seen."""
        def seen() -> int:
            steps = [int(s) for s in STEP_LINE.findall(self.log())]
            return max(steps) if steps and max(steps) >= step else 0

        return wait_for(f"job {self.id} to reach step {step}", seen, JOB_TIMEOUT, describe=self.describe)

    def wait_final(self) -> dict[str, str]:
        """Wait until the job has ended for good; its fields."""
        def ended() -> dict[str, str] | None:
            info = self.info()
            return info if info.get("JobState") in FINAL_STATES else None

        return wait_for(f"job {self.id} to end", ended, JOB_TIMEOUT, interval=0.5, describe=self.describe)

    def preempted_at(self) -> int:
        found = re.findall(r"preempted: checkpoint at step (\d+) written", self.log())
        assert len(found) == 1, f"expected one checkpoint on a signal, found {found}\n{self.describe()}"
        return int(found[0])


def same_weights(run_dir: Path, reference: Path) -> bool:
    ours, ref = final_weights(run_dir), final_weights(reference)
    return ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


@pytest.fixture(scope="module")
def reference(cluster, shards, tmp_path_factory) -> Job:
    """(a): one run to completion, the uninterrupted run that (b) and (d) must end equal to."""
    job = Job(cluster, shards, tmp_path_factory.mktemp("complete"), "complete")
    job.wait_final()
    return job


def test_a_run_completes(reference):
    info = reference.info()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), reference.describe()
    log = reference.log()
    assert f"step {STEPS}/{STEPS} " in log and "run.sh: training exited with status 0" in log, reference.describe()
    assert (reference.run_dir / "final.safetensors").is_file()


def test_b_scontrol_requeue_mid_run_resumes_from_the_signal_step(cluster, shards, tmp_path, reference):
    job = Job(cluster, shards, tmp_path, "requeue")
    seen = job.wait_step(5)
    cluster.command("scontrol", "requeue", job.id)
    info = job.wait_final()
    log = job.log()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", job.describe()
    step = job.preempted_at()
    assert seen <= step < STEPS, job.describe()
    assert f"resumed from step {step}" in log, job.describe()
    assert f"Slurm has requeued job {job.id} itself" in log, job.describe()
    assert "requeueing job" not in log and "requeue failed" not in log, job.describe()
    assert same_weights(job.run_dir, reference.run_dir), "requeued run's weights differ from the uninterrupted run"


def test_c_scancel_mid_run_cancels_without_requeue(cluster, shards, tmp_path):
    job = Job(cluster, shards, tmp_path, "cancel")
    seen = job.wait_step(5)
    cluster.command("scancel", job.id)
    info = job.wait_final()
    time.sleep(2)  # a requeue by run.sh would have come before the job left COMPLETING; look once more anyway
    info = job.info()
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), job.describe()
    step = job.preempted_at()  # the trainer handled the SIGTERM: checkpoint at the signal step, exit 75
    assert seen <= step < STEPS, job.describe()
    log = job.log()
    assert f"job {job.id} was cancelled, so it is not requeued" in log, job.describe()
    assert "requeueing job" not in log, job.describe()
    assert not (job.run_dir / "final.safetensors").exists()


def test_d_sigusr1_at_start_checkpoints_requeues_and_completes(cluster, shards, tmp_path, reference):
    job = Job(cluster, shards, tmp_path, "usr1")
    job.wait_running()
    # Every rank is up (the process group exists) once rank 0 has opened its TensorBoard file; no step yet.
    wait_for("the run's TensorBoard file", lambda: list((job.run_dir / "tensorboard").glob("events.*")),
             JOB_TIMEOUT, describe=job.describe)
    cluster.command("scancel", "--signal=USR1", "--full", job.id)  # the batch shell and srun; srun passes it on
    info = job.wait_final()
    log = job.log()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", job.describe()
    assert "run.sh: got SIGUSR1, passing it on to the tasks" in log, job.describe()
    step = job.preempted_at()
    assert 1 <= step < STEPS, job.describe()
    assert f"requeueing job {job.id} (restart 1)" in log, job.describe()
    assert f"resumed from step {step}" in log, job.describe()
    assert same_weights(job.run_dir, reference.run_dir), "requeued run's weights differ from the uninterrupted run"
