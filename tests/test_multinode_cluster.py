"""Several nodes for real: a private 2-node Slurm cluster on this machine (tests/helpers_slurm_nodes.py; each node a
network + UTS namespace with its own slurmd, host name, address and hosts file) runs `launch/slurm/pretrain.sbatch`
with one CPU rank per node, gloo over TCP between the nodes, on the demo config and the digits shards.

Pinned: (a) `sbatch --nodes=2 --ntasks-per-node=1` completes with the TensorBoard losses and final weights of a
2-rank job on one node, and its log shows the layout (rank 0's line, one line per node); (b) node loss: kill -9 of
every process of the job on one node mid-run (the task and its DataLoader worker): the rank left exits 76 within
train.collective_timeout_s, run.sh requeues the job, the node is drained as an administrator (or Slurm's health
check) would, the requeued job is given 1 node (`scontrol update JobId=... NumNodes=1-1 NumTasks=1`), and it resumes
on the node left (its 2 tasks there) from the last checkpoint's step and data position, and completes with the
2-node run's losses.

Skips only where namespaces or Slurm cannot be set up, and not even then under CI=true: there it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.helpers_netns import NamespacesUnavailable
from tests.helpers_runs import build_digits, final_weights, scalars
from tests.helpers_slurm import SlurmUnavailable, wait_for
from tests.helpers_slurm_nodes import MultiNodeSlurm

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
CHECKPOINT_EVERY = 10
TIMEOUT_S = 20  # train.collective_timeout_s: how long a rank waits for a silent peer
SETS = {"train.steps": STEPS, "logging.every_steps": 1, "logging.image_every_steps": 0,
        "checkpoint.every_steps": CHECKPOINT_EVERY, "train.collective_timeout_s": TIMEOUT_S}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT = 300
STEP_LINE = re.compile(r"^step (\d+)/" + str(STEPS) + r" .*?\| loss (\S+) ", re.M)
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def work():
    """The cluster's and the jobs' directory. Not pytest's tmp_path: other pytest sessions on the machine delete all
    but their 3 newest base temp directories, running ones included, and the daemons and jobs outlive a session's
    start by minutes."""
    path = Path(tempfile.mkdtemp(prefix="mixer-multinode-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def subdir(work: Path, name: str) -> Path:
    (work / name).mkdir()
    return work / name


@pytest.fixture(scope="module")
def cluster(work):
    # 3 CPUs per node: the 2-rank one-node job and the 2-node job of (a) run side by side
    c = MultiNodeSlurm(subdir(work, "slurm"), cpus=3)
    try:
        try:
            c.start()
        except (SlurmUnavailable, NamespacesUnavailable) as e:
            if IN_CI:
                pytest.fail(f"CI=true and no multi-node test cluster (network namespaces + Slurm): {e}")
            pytest.skip(f"no multi-node test cluster: {e}")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shards(work) -> Path:
    return build_digits(work / "digits" / "train")


class Job:
    """One `sbatch ... launch/slurm/pretrain.sbatch` of CPU ranks (gloo), and what can be read of it."""

    def __init__(self, cluster: MultiNodeSlurm, shards: Path, tmp: Path, name: str, *resources: str) -> None:
        self.cluster, self.name = cluster, name
        self.run_dir = tmp / "run"
        sets = {"data.train": str(shards), **SETS}
        env = cluster.env(CONFIG="configs/demo.yaml", RUN_DIR=str(self.run_dir), PYTHON=sys.executable,
                          EXTRA_ARGS=" ".join(f"--set {k}={v}" for k, v in sets.items()), OMP_NUM_THREADS="1")
        out = cluster.command("sbatch", *resources, "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:15:00",
                              f"--job-name={name}", f"--output={tmp}/%x-%j.out", "--parsable",
                              "launch/slurm/pretrain.sbatch", env=env, cwd=ROOT)
        self.id = out.stdout.strip().split(";")[0]
        assert self.id.isdigit(), out.stdout + out.stderr
        self.output = tmp / f"{name}-{self.id}.out"

    def info(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.is_file() else ""

    def losses(self) -> list[tuple[int, str]]:
        """(step, loss as logged) for every progress line, in order (a requeued run's lines follow the first's)."""
        return [(int(step), loss) for step, loss in STEP_LINE.findall(self.log())]

    def describe(self) -> str:
        lines = [line for line in self.log().splitlines() if not re.match(r"^(\[rank\d\]:)?\s", line)]
        return (f"--- job {self.id}: {self.info()}\n--- output (last 60 lines, tracebacks folded)\n"
                + "\n".join(lines[-60:]) + f"\n--- slurmctld.log\n{self.cluster.log_tail('slurmctld', 15)}")

    def wait_step(self, step: int) -> int:
        """Wait until the run has logged step `step` or later; the step seen."""
        def seen() -> int:
            steps = [s for s, _ in self.losses()]
            return max(steps) if steps and max(steps) >= step else 0

        return wait_for(f"job {self.id} to reach step {step}", seen, JOB_TIMEOUT, interval=0.1,
                        describe=self.describe)

    def wait_final(self) -> dict[str, str]:
        def ended() -> dict[str, str] | None:
            info = self.info()
            return info if info.get("JobState") in FINAL_STATES else None

        return wait_for(f"job {self.id} to end", ended, JOB_TIMEOUT, interval=0.5, describe=self.describe)


def task_pids(cluster: MultiNodeSlurm, node: str, job_id: str) -> list[int]:
    """Every process of job `job_id` on `node`: its tasks and their DataLoader workers (not slurmd, slurmstepd)."""
    marker = f"SLURM_JOB_ID={job_id}".encode()
    pids = []
    for pid in cluster.hosts.pids(node):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.append(pid)
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def two_node_and_one_node(cluster, shards, work) -> tuple[Job, Job]:
    """(a): the 2-node job and the 2-rank job on one node, submitted together, both run to completion."""
    two = Job(cluster, shards, subdir(work, "two-nodes"), "two-nodes", "--nodes=2", "--ntasks-per-node=1")
    one = Job(cluster, shards, subdir(work, "one-node"), "one-node", "--nodes=1", "--ntasks-per-node=2",
              "--nodelist=n1")
    two.wait_final()
    one.wait_final()
    return two, one


def test_a_two_nodes_match_two_ranks_on_one_node(two_node_and_one_node):
    two, one = two_node_and_one_node
    for job in (two, one):
        info = job.info()
        assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), job.describe()
    assert two.info()["NodeList"] == "n[1-2]" and one.info()["NodeList"] == "n1"
    log = two.log()
    port = 20000 + int(two.id) % 10000
    assert (f"layout: world size 2 on 2 node(s): n1 (ranks 0), n2 (ranks 1); master n1:{port}; backend gloo; "
            "launcher slurm") in log, two.describe()
    for node, rank in (("n1", 0), ("n2", 1)):
        assert f"node {node}: ranks {rank} of 2, device cpu, 1 OpenMP threads per rank" in log, two.describe()
    assert "layout: world size 2 on 1 node(s): n1 (ranks 0,1)" in one.log(), one.describe()
    ours, ref = scalars(two.run_dir)["train/loss"], scalars(one.run_dir)["train/loss"]
    assert [s for s, _ in ours] == list(range(1, STEPS + 1)) and ours == ref
    w2, w1 = final_weights(two.run_dir), final_weights(one.run_dir)
    assert w2.keys() == w1.keys() and all(torch.equal(w2[k], w1[k]) for k in w1)


def test_b_node_loss_requeues_and_resumes_on_the_node_left(cluster, shards, work, two_node_and_one_node):
    reference = dict(two_node_and_one_node[0].losses())
    job = Job(cluster, shards, subdir(work, "node-loss"), "node-loss", "--nodes=2", "--ntasks-per-node=1")
    job.wait_step(CHECKPOINT_EVERY + 2)
    assert "layout: world size 2 on 2 node(s)" in job.log(), job.describe()
    assert f"checkpoint at step {CHECKPOINT_EVERY} written" in job.log(), job.describe()

    pids = task_pids(cluster, "n2", job.id)
    assert len(pids) >= 2, f"expected the task and its DataLoader worker on n2, found {pids}\n{job.describe()}"
    for pid in pids:  # stop them all first, so none sees the others die
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    lost = time.monotonic()
    # what an administrator (or the health check) does with a node that is gone: no new work goes there
    cluster.command("scontrol", "update", "NodeName=n2", "State=DRAIN", "Reason=lost in a test")

    wait_for("the rank left to report the lost peer", lambda: "lost contact with another rank" in job.log(),
             TIMEOUT_S * 3, describe=job.describe)
    wait_for("run.sh to requeue the job", lambda: f"requeueing job {job.id} (restart 1)" in job.log(),
             TIMEOUT_S * 3, describe=job.describe)
    exited = time.monotonic() - lost
    # the job waits for 2 nodes; 1 is left: let it run on that one
    wait_for("the requeued job to wait", lambda: job.info().get("JobState") == "PENDING", JOB_TIMEOUT,
             describe=job.describe)
    cluster.command("scontrol", "update", f"JobId={job.id}", "NumNodes=1-1", "NumTasks=1")
    wait_for("the requeued job to start", lambda: job.log().count("layout: world size") == 2, JOB_TIMEOUT,
             describe=job.describe)
    restarted = time.monotonic() - lost
    info = job.wait_final()
    print(f"node loss -> requeue by run.sh {exited:.1f} s; -> requeued job's layout line {restarted:.1f} s")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1" and info["NodeList"] == "n1", job.describe()
    assert exited < TIMEOUT_S + 15, f"the rank left took {exited:.0f} s to exit\n{job.describe()}"

    log = job.log()
    # the requeued job keeps its 2 tasks (the environment saved at submission says so): both on the node left
    assert "layout: world size 2 on 1 node(s): n1 (ranks 0,1)" in log, job.describe()
    assert f"resumed from step {CHECKPOINT_EVERY}" in log, job.describe()
    steps = job.losses()
    first_end = next(i for i in range(1, len(steps)) if steps[i][0] <= steps[i - 1][0])
    first, second = steps[:first_end], steps[first_end:]
    # the first run is the 2-node reference up to where it was killed; the resumed one picks up at the checkpoint's
    # step and data position and continues it exactly (2 ranks on one node are bit-identical to 2 on two, test a)
    assert all(reference[s] == loss for s, loss in first), (first, reference)
    assert [s for s, _ in second] == list(range(CHECKPOINT_EVERY + 1, STEPS + 1)), job.describe()
    assert all(reference[s] == loss for s, loss in second), (second, reference)
