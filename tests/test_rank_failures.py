"""An error on one rank of a real 2-rank run (deepspeed launcher, gloo CPU ranks) ends every rank in bounded time
with that rank's one-line message, instead of leaving the others in a collective.

Injected (tests/helpers_fault_worker.py) on rank 1 only: its evaluation counts raise inside the lockstep loop (rank 0
waits in the next all-reduce), and its write of its ZeRO optimizer shard fails inside DeepSpeed's save_checkpoint
(rank 0 waits in DeepSpeed's closing barrier).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers_fault_worker import EVAL_MESSAGE
from tests.helpers_runs import ROOT, build_digits, command, env, failure, write_config

WORKER = "tests/helpers_fault_worker.py"
STARTUP = 300  # seconds for 2 ranks to start and reach the failure on a busy 2-core machine
BOUND = 60  # seconds from the failure to the end of every rank


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    return build_digits(root / "train"), build_digits(root / "val", split="val")


def run_with_fault(tmp_path: Path, digits, fault: str, **overrides) -> tuple[subprocess.CompletedProcess, float]:
    train, val = digits
    base = {"data.train": str(train), "data.workers": 1, "train.steps": 6, "logging.every_steps": 1,
            "logging.image_every_steps": 0, "checkpoint.every_steps": 1000,
            "evals": {"val": {"type": "classification", "data": str(val), "every_steps": 2, "batch_size": 50}}}
    cfg = write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {**base, **overrides})
    start = time.monotonic()
    proc = subprocess.run(command(WORKER, 2, "--config", str(cfg), "--run-dir", str(tmp_path / "run")), cwd=ROOT,
                          env={**env(), "FAULT": fault, "FAULT_RANK": "1"}, capture_output=True, text=True,
                          timeout=STARTUP + BOUND)
    return proc, time.monotonic() - start


@pytest.mark.timeout(STARTUP + BOUND + 30)
def test_an_error_on_one_rank_inside_an_evaluation_ends_every_rank_with_its_message(tmp_path, digits):
    proc, _ = run_with_fault(tmp_path, digits, "eval")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, failure(proc)
    assert f"[rank 0] error: rank 1 failed during the evaluation: ValueError: {EVAL_MESSAGE}" in out, failure(proc)
    assert f"ValueError: {EVAL_MESSAGE}" in out  # rank 1's own error
    assert "step 2/6" in out and "step 3/6" not in out, failure(proc)  # no rank went on training


@pytest.mark.timeout(STARTUP + BOUND + 30)
def test_a_checkpoint_write_failing_on_one_rank_ends_every_rank_with_its_message(tmp_path, digits):
    proc, _ = run_with_fault(tmp_path, digits, "save", **{"checkpoint.every_steps": 2, "evals": {}})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, failure(proc)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    for rank in (0, 1):
        assert (f"[rank {rank}] error: cannot write checkpoint {checkpoint}: [Errno 5] Input/output error (injected)"
                in out), failure(proc)
    assert not checkpoint.exists() and not (checkpoint.parent / "latest").exists()
    assert "step 3/6" not in out, failure(proc)
