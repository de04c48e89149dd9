"""Start-up checks of where the ranks run: an unresolvable master and a loopback node name are one line in seconds;
the layout lines name the world size, the ranks of each host, the master and the backend."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from pretrain.cluster.distributed import DistEnv, free_port
from pretrain.cluster.errors import DistributedSetupError
from pretrain.cluster.hosts import check_loopback_hostname, check_master, layout_lines
from tests.helpers_runs import ROOT, build_digits, command, env, write_config

BAD_MASTER = "no-such-node.invalid"  # .invalid never resolves (RFC 2606)


def dist_env(world_size: int = 2, local_world_size: int = 1, master: str = "127.0.0.1") -> DistEnv:
    return DistEnv(rank=0, local_rank=0, world_size=world_size, local_world_size=local_world_size, node_rank=0,
                   master_addr=master, master_port=29500, backend="gloo", device=torch.device("cpu"),
                   launcher="slurm")


def test_an_unresolvable_master_is_one_line_naming_it():
    start = time.monotonic()
    with pytest.raises(DistributedSetupError, match=f"MASTER_ADDR={BAD_MASTER} does not resolve on "):
        check_master(dist_env(master=BAD_MASTER))
    assert time.monotonic() - start < 10
    check_master(dist_env(master="127.0.0.1"))
    check_master(dist_env(world_size=1, local_world_size=1, master=BAD_MASTER))  # a single process never connects


def test_a_node_name_on_a_loopback_address_is_refused_on_a_multi_node_job(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    with pytest.raises(DistributedSetupError, match=r"this node's name localhost resolves to 127\.0\.0\.1, a loopback "
                                                    r"address .*GLOO_SOCKET_IFNAME"):
        check_loopback_hostname(dist_env(), hostname="localhost")
    check_loopback_hostname(dist_env(local_world_size=2), hostname="localhost")  # one node: loopback is right
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    check_loopback_hostname(dist_env(), hostname="localhost")  # the user picked the interface


def test_the_layout_line_names_world_hosts_master_and_backend():
    line, per_host = layout_lines(dist_env(world_size=4), ["a", "a", "b", "b"])
    assert per_host == {"a": [0, 1], "b": [2, 3]}
    assert line == ("layout: world size 4 on 2 node(s): a (ranks 0,1), b (ranks 2,3); master 127.0.0.1:29500; "
                    "backend gloo; launcher slurm")
    assert "a (ranks 0-7)" in layout_lines(dist_env(world_size=8), ["a"] * 8)[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("digits") / "train")


@pytest.mark.timeout(300)
def test_a_real_two_task_start_with_an_unresolvable_master_fails_in_seconds(tmp_path, shards):
    cfg = write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {"data.train": str(shards)})
    base = {k: v for k, v in env().items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                         "MASTER_ADDR"}}
    base |= {"SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2",
             "SLURM_JOB_NODELIST": BAD_MASTER, "SLURM_JOB_ID": "4444", "MASTER_PORT": str(free_port())}
    tasks = [subprocess.Popen(command("launch/pretrain.py", 1, "--config", str(cfg), "--run-dir", str(tmp_path / "r")),
                              cwd=ROOT, env=base | {"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for rank, task in enumerate(tasks):
        out, err = task.communicate(timeout=240)  # imports on a busy machine; the check itself takes no time
        assert task.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"[rank {rank}] error: MASTER_ADDR={BAD_MASTER} does not resolve on "), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
