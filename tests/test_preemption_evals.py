"""SIGUSR1 (Slurm's `--signal=USR1@300`) to every process of a real run in the middle of a slow evaluation: the run
abandons the evaluation at the next batch on every rank at once, checkpoints the step and exits 75 within one
evaluation batch (plus the save); the resumed run first runs the evaluation it owed, so metrics.json and TensorBoard
hold it exactly once.

The evaluator sleeps SLOW_EVAL_S before each batch (tests/helpers_slow_eval_worker.py); the signal lands in batch 2 of
an evaluation whose other batches would take a minute more. Before the signal was checked between evaluation batches,
the run finished the whole evaluation first.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE
from tests.helpers_runs import ROOT, build_digits, command, env, failure, run, scalars, write_config
from tests.test_preemption_runs import kill_group, wait_until_gone

WORKER = "tests/helpers_slow_eval_worker.py"
DELAY = 2.0  # seconds per evaluation batch
BATCH = 4  # the digits' 360 validation images are 90 such batches: minutes of evaluation
EVERY = 4  # the evaluation of step 4 is the one signalled
STARTUP = 300  # seconds to reach the evaluation of step 4 on a busy 2-core machine
# Signal -> exit 75: the rest of the signalled batch (<= DELAY) and the checkpoint's save and the exit, which take a
# seconds (measured on a busy shared 2-core machine: 7-12 s for 1 process, 17-21 s for 2 ranks, mostly the exit).
BOUND = DELAY + 40
BATCH_LINE = re.compile(r"\[rank 0\] slow eval batch (\d+)")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    return build_digits(root / "train"), build_digits(root / "val", split="val")


def config(tmp_path: Path, digits, batch_size: int = BATCH, **overrides) -> str:
    train, val = digits
    overrides = {"data.train": str(train), "data.workers": 1, "train.steps": 1000, "logging.every_steps": 1,
                 "logging.image_every_steps": 0, "checkpoint.every_steps": 1000,
                 "evals": {"val": {"type": "classification", "data": str(val), "every_steps": EVERY,
                                   "batch_size": batch_size}}, **overrides}
    return str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", overrides))


def start(tmp_path: Path, cfg: str, nproc: int, log: Path, **extra: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command(WORKER, nproc, "--config", cfg, "--run-dir", str(tmp_path / "run")), cwd=ROOT,
                                env={**env(), "SLOW_EVAL_S": str(DELAY), **extra}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_eval_batch(log: Path, job: subprocess.Popen, batch: int) -> None:
    deadline = time.monotonic() + STARTUP
    while not any(int(b) >= batch for b in BATCH_LINE.findall(log.read_text(errors="replace"))):
        assert job.poll() is None, "the run ended early:\n" + log.read_text()[-5000:]
        assert time.monotonic() < deadline, "no evaluation:\n" + log.read_text()[-5000:]
        time.sleep(0.05)


def evaluation_batches(val: Path, ranks: int) -> int:
    """The batches of one evaluation on each rank (the largest share)."""
    samples = json.loads((val / "manifest.json").read_text())["num_samples"]
    return math.ceil(math.ceil(samples / ranks) / BATCH)


def wall_time(run_dir: Path, tag: str, step: int) -> float:
    """When the run logged `tag` at `step` to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    (when,) = [e.wall_time for e in acc.Scalars(tag) if e.step == step]
    return when


def resume_without_a_hole(cfg: str, run_dir: Path) -> None:
    """The resumed run evaluates step 4 first, once; metrics.json and TensorBoard hold steps 4 and 6 once each."""
    resumed = run("launch/pretrain.py", 1, "--config", cfg, "--run-dir", str(run_dir), "--resume", "auto",
                  "--set", "train.steps=6", timeout=STARTUP + 60)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, failure(resumed)
    assert out.count(f"step {EVERY} eval val (trained weights)") == 1, out[-5000:]
    assert wall_time(run_dir, "eval/val/top1", EVERY) < wall_time(run_dir, "train/loss", EVERY + 1)  # before training
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [(r["step"], r["name"], r["weights"]) for r in history] == [(4, "val", "trained"), (6, "val", "trained")]
    assert [step for step, _ in scalars(run_dir)["eval/val/top1"]] == [4, 6]  # TensorBoard: once each, no hole


def check_preempted_at_the_evaluation(run_dir: Path, output: str) -> None:
    assert f"preempted: checkpoint at step {EVERY} written; evaluations owed at this step, run after the resume: " \
           "val (trained)" in output, output[-5000:]
    assert f"step {EVERY + 1}/" not in output, output[-5000:]  # no rank trained on
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{EVERY:08d}"
    assert not (run_dir / "metrics.json").exists()  # the abandoned evaluation recorded nothing


@pytest.mark.timeout(STARTUP * 2 + 180)
def test_a_signal_during_an_evaluation_checkpoints_within_one_batch_and_the_resume_runs_it_once(tmp_path, digits):
    cfg, run_dir, log = config(tmp_path, digits), tmp_path / "run", tmp_path / "run.log"
    assert evaluation_batches(digits[1], 1) * DELAY > 3 * BOUND  # what finishing the evaluation would have cost
    job = start(tmp_path, cfg, 1, log)
    try:
        wait_for_eval_batch(log, job, 2)
        signalled = time.monotonic()
        os.killpg(job.pid, signal.SIGUSR1)  # the rank and its DataLoader workers, as Slurm signals the step
        code = job.wait(timeout=BOUND + 60)
        elapsed = time.monotonic() - signalled
    finally:
        kill_group(job.pid)
    output = log.read_text(errors="replace")
    print(f"1 process: signal -> exit {code} in {elapsed:.1f} s")
    assert code == PREEMPTED_EXIT_CODE, output[-5000:]
    assert elapsed < BOUND, (elapsed, output[-5000:])
    check_preempted_at_the_evaluation(run_dir, output)

    resume_without_a_hole(cfg, run_dir)


@pytest.mark.timeout(STARTUP * 2 + 120)
def test_a_signal_in_the_step_of_an_evaluation_leaves_it_owed_and_the_resume_runs_it(tmp_path, digits):
    """Preempted at step S with S % every_steps == 0: the run saves S before evaluating it; the resume runs it."""
    cfg, run_dir, log = config(tmp_path, digits), tmp_path / "run", tmp_path / "run.log"
    job = start(tmp_path, cfg, 1, log, SIGNAL_AT_STEP=str(EVERY))
    try:
        code = job.wait(timeout=STARTUP)
    finally:
        kill_group(job.pid)
    output = log.read_text(errors="replace")
    assert code == PREEMPTED_EXIT_CODE, output[-5000:]
    check_preempted_at_the_evaluation(run_dir, output)
    assert "slow eval batch" not in output  # not started: owed whole
    resume_without_a_hole(cfg, run_dir)


@pytest.mark.timeout(STARTUP + 60)
def test_a_signal_during_a_save_exits_75_on_that_checkpoint_without_another_step(tmp_path, digits):
    cfg = config(tmp_path, digits, batch_size=180, **{"checkpoint.every_steps": EVERY})  # a 2-batch evaluation
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    job = start(tmp_path, cfg, 1, log, SIGNAL_IN_SAVE="1")
    try:
        code = job.wait(timeout=STARTUP)
    finally:
        kill_group(job.pid)
    output = log.read_text(errors="replace")
    assert code == PREEMPTED_EXIT_CODE, output[-5000:]
    # The periodic save of step 4 (with its evaluation done first) is the one the requeued job resumes from.
    assert "checkpoint at step 4 written" in output and "preempted: checkpoint at step 4 already written" in output
    assert "step 5/" not in output, output[-5000:]
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == [f"step-{EVERY:08d}"]  # no second save
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{EVERY:08d}"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [(r["step"], r["name"]) for r in history] == [(EVERY, "val")]


@pytest.mark.timeout(STARTUP + BOUND + 120)
def test_every_rank_of_a_2_rank_run_abandons_the_evaluation_at_the_same_batch_and_exits_75(tmp_path, digits):
    cfg, run_dir, log = config(tmp_path, digits), tmp_path / "run", tmp_path / "run.log"
    assert evaluation_batches(digits[1], 2) * DELAY > 2 * BOUND
    job = start(tmp_path, cfg, 2, log)
    try:
        wait_for_eval_batch(log, job, 2)
        # Every process of the ranks (and their DataLoader workers); not DeepSpeed's two launcher processes, which
        # set no SIGUSR1 handler and would die of it: left alone, they exit with the ranks' status.
        (launcher,) = psutil.Process(job.pid).children()
        targets = [p for rank in launcher.children() for p in [rank, *rank.children(recursive=True)]]
        assert len(launcher.children()) == 2 and len(targets) > 2, targets  # the ranks and their loader workers
        signalled = time.monotonic()
        for p in targets:
            p.send_signal(signal.SIGUSR1)
        code = job.wait(timeout=BOUND + 60)
        elapsed = time.monotonic() - signalled
        wait_until_gone(job.pid, timeout=30)
    finally:
        kill_group(job.pid)
    output = log.read_text(errors="replace")
    print(f"2 ranks: signal -> exit {code} in {elapsed:.1f} s")
    assert code == PREEMPTED_EXIT_CODE, output[-5000:]  # the launcher passes on the ranks' status
    assert elapsed < BOUND, (elapsed, output[-5000:])
    check_preempted_at_the_evaluation(run_dir, output)
    last = {r: max(int(b) for b in re.findall(rf"\[rank {r}\] slow eval batch (\d+)", output)) for r in (0, 1)}
    assert last[0] == last[1] < evaluation_batches(digits[1], 2), last  # both left at the same batch, early
