"""Launcher detection from environment dicts, and real 2-process gloo runs launched as users launch them."""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.cluster.distributed import (
    DistEnv,
    add_launcher_arguments,
    check_device,
    detect_env,
    free_port,
    slurm_job_port,
)

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "helpers_dist_worker.py"
# The venv's console scripts, run by this interpreter: a linked venv's scripts name another path to the same
# python, and DeepSpeed rebuilds its CPU op whenever the torch include path in its build file changes.
BIN = Path(sys.executable).parent
# DeepSpeed compiles a CPU shared-memory op the first time it joins a group on a machine (about 40 s alone,
# minutes on a busy machine) and caches it in ~/.cache/torch_extensions; later launches take 5-25 s.
LAUNCH_TIMEOUT = 300
NO_SCONTROL = {"PATH": "/nonexistent"}  # the Slurm cases use our parser even on a Slurm node


def test_deepspeed_launcher_env():
    env = detect_env(
        {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501",
         "CROSS_RANK": "1", "CROSS_SIZE": "2"},
        cuda=False,
    )
    assert env == DistEnv(rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1,
                          master_addr="10.0.0.1", master_port=29501, backend="gloo",
                          device=torch.device("cpu"), launcher="deepspeed")
    assert not env.is_main


def test_torchrun_env_on_gpus():
    env = detect_env(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"},
        cuda=True,
    )
    assert (env.launcher, env.backend, env.device, env.local_world_size, env.node_rank) == (
        "torchrun", "nccl", torch.device("cuda", 0), 2, 0)
    assert env.is_main


def test_torch_vars_win_over_slurm_vars():
    env = detect_env(
        {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "gpu1"},
        cuda=False,
    )
    assert (env.rank, env.world_size, env.launcher, env.master_addr) == (1, 2, "env", "127.0.0.1")


def test_slurm_env_two_nodes():
    env = detect_env(
        {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NODEID": "1",
         "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "123456",
         **NO_SCONTROL},
        cuda=True,
    )
    assert env == DistEnv(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1,
                          master_addr="gpu007", master_port=23456, backend="nccl",
                          device=torch.device("cuda", 1), launcher="slurm")


def test_slurm_env_prefers_step_values_and_explicit_master():
    env = detect_env(
        {"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "3",
         "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x3)", "SLURM_TASKS_PER_NODE": "8(x2)",
         "SLURM_NTASKS_PER_NODE": "8",
         "SLURM_STEP_NODELIST": "b[1-3]", "SLURM_JOB_NODELIST": "a[1-3]", "SLURM_JOB_ID": "99",
         **NO_SCONTROL},
        cuda=False,
    )
    assert (env.world_size, env.local_world_size, env.master_addr, env.master_port) == (3, 1, "b1", 20099)
    env = detect_env(
        {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_JOB_NODELIST": "a[1-3]", "SLURM_JOB_ID": "99", "MASTER_ADDR": "head", "MASTER_PORT": "4242"},
        cuda=False,
    )
    assert (env.local_world_size, env.master_addr, env.master_port) == (2, "head", 4242)


def test_plain_process_is_rank_zero_of_one_with_a_free_port():
    env = detect_env({}, cuda=False)
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (0, 0, 1, 1)
    assert env.launcher == "single"
    assert 0 < env.master_port < 65536
    assert detect_env({"MASTER_PORT": "3333"}, cuda=False).master_port == 3333


def test_slurm_job_port_is_deterministic_and_in_range():
    assert slurm_job_port("4242") == 24242
    assert slurm_job_port("1234567") == 24567
    assert slurm_job_port("777_3") == 27773  # array task ids keep their digits
    with pytest.raises(ValueError, match=r"^SLURM_JOB_ID='abc' has no digits to derive a port from$"):
        slurm_job_port("abc")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"},
         "incomplete launcher environment: RANK, WORLD_SIZE set but LOCAL_RANK missing"),
        ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"},
         "rank 2 is outside world size 2"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
         "WORLD_SIZE=2 but MASTER_ADDR is not set"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "two"},
         "environment variable WORLD_SIZE='two' is not an integer"),
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"},
         "Slurm task without SLURM_JOB_NODELIST: set MASTER_ADDR to the first node"),
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "3", "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)",
          "SLURM_JOB_NODELIST": "n1"}, "local rank 3 is outside local world size 2"),
    ],
)
def test_bad_environments_give_one_line_errors(environ, message):
    with pytest.raises(ValueError) as err:
        detect_env(environ, cuda=False)
    assert str(err.value) == message


def test_more_processes_than_gpus_is_refused():
    env = detect_env({"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4",
                      "MASTER_ADDR": "h", "MASTER_PORT": "1"}, cuda=True)
    check_device(env, device_count=4)
    with pytest.raises(ValueError, match=r"^local rank 2 needs cuda:2 but this node shows 2 GPU\(s\)"):
        check_device(env, device_count=2)


def test_launch_scripts_accept_and_ignore_deepspeeds_local_rank():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_launcher_arguments(parser)
    assert parser.parse_args(["--config", "c.yaml", "--local_rank=1"]).config == "c.yaml"
    assert parser.parse_args(["--local-rank", "0"]).config is None
    assert "local" not in parser.format_help()


# --- real process groups ------------------------------------------------------------------------------------

def _clean_env() -> dict:
    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}


def _records(out: Path, world_size: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


def _check_two_ranks(out: Path, launcher: str, port: int, master_addr: str = "127.0.0.1") -> None:
    records = _records(out, 2)
    for rank, record in enumerate(records):
        assert record["rank"] == record["group_rank"] == rank
        assert record["local_rank"] == rank
        assert (record["world_size"], record["group_size"], record["local_world_size"]) == (2, 2, 2)
        assert (record["launcher"], record["backend"]) == (launcher, "gloo")
        assert (record["master_addr"], record["master_port"]) == (master_addr, port)
        assert record["sum"] == 3.0  # 1 + 2 from the two ranks
        assert record["own_request"] is (rank == 1)
        assert record["stop"] is True  # rank 1's signal stops both


def _launch_two(out: Path, *launcher: str) -> int:
    """Run the worker as 2 processes under `launcher` (the command up to its port option); returns the port."""
    port = free_port()
    cmd = [sys.executable, *launcher, "--master_port", str(port), str(WORKER), "--out", str(out)]
    result = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, cwd=out, timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return port


@pytest.mark.timeout(LAUNCH_TIMEOUT + 20)
def test_deepspeed_launcher_two_cpu_processes(tmp_path):
    port = _launch_two(tmp_path, str(BIN / "deepspeed"), "--num_accelerators", "2")
    _check_two_ranks(tmp_path, "deepspeed", port)
    # DeepSpeed's CPU all-reduce buffers (66 MiB of RAM per rank) leave no name behind in /dev/shm
    assert sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*")) == []


@pytest.mark.timeout(LAUNCH_TIMEOUT + 20)
def test_torchrun_two_processes(tmp_path):
    port = _launch_two(tmp_path, str(BIN / "torchrun"), "--nproc_per_node", "2")
    _check_two_ranks(tmp_path, "torchrun", port)


def _free_slurm_job_id() -> str:
    for job_id in range(int.from_bytes(os.urandom(2), "little"), 10**6, 7):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", slurm_job_port(str(job_id))))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port in the Slurm range")


@pytest.mark.timeout(LAUNCH_TIMEOUT + 20)
def test_fake_slurm_two_tasks_find_master_from_nodelist(tmp_path):
    job_id = _free_slurm_job_id()
    procs = []
    for rank in range(2):
        env = _clean_env() | {
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_NTASKS": "2",
            "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": job_id,
        }
        cmd = [sys.executable, str(WORKER), "--out", str(tmp_path)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=LAUNCH_TIMEOUT)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    _check_two_ranks(tmp_path, "slurm", slurm_job_port(job_id), master_addr="localhost")


@pytest.mark.timeout(LAUNCH_TIMEOUT + 20)
def test_plain_python_is_a_group_of_one(tmp_path):
    result = subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path)], env=_clean_env(),
                            capture_output=True, text=True, cwd=tmp_path, timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [record] = _records(tmp_path, 1)
    assert (record["world_size"], record["group_size"], record["sum"]) == (1, 1, 1.0)
    assert record["launcher"] == "single"
    assert (record["own_request"], record["stop"]) == (False, False)
