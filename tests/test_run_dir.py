"""A run dir that holds a run is resumed, moved aside on request, or refused before anything is written
(pretrain/components/run_dir.py); pruning only removes the current run's checkpoints
(pretrain/components/checkpoint.py); a resumed run's TensorBoard drops what the earlier attempt logged after the
restored checkpoint (pretrain/telemetry/monitor.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pretrain.components.checkpoint import Checkpointer, CheckpointError
from pretrain.components.run_dir import RunDirError, check_eval_dir, claim
from pretrain.telemetry.monitor import Monitor
from tests.helpers_runs import ROOT, build_digits, env, failure, run, write_config

PRETRAIN = "launch/pretrain.py"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint(run_dir: Path, step: int, run_id: str | None = "r1") -> str:
    tag = f"step-{step:08d}"
    (run_dir / "checkpoints" / tag).mkdir(parents=True)
    meta = {"step": step} if run_id is None else {"step": step, "run_id": run_id}
    (run_dir / "checkpoints" / tag / "meta.json").write_text(json.dumps(meta))
    return tag


def finished_run(run_dir: Path) -> Path:
    for step in (2, 3):
        checkpoint(run_dir, step)
    (run_dir / "checkpoints" / "latest").write_text("step-00000003\n")
    for name in ("config.yaml", "metrics.json", "final.safetensors"):
        (run_dir / name).write_text(name)
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out.tfevents.1").write_text("e")
    return run_dir


def test_a_run_dir_holding_a_run_is_refused_and_left_as_it_was(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    before = snapshot(run_dir)
    with pytest.raises(RunDirError) as err:
        claim(run_dir, resume=False, overwrite=False, rank=0)
    assert str(err.value) == (
        f"{run_dir} already holds a run (step-00000003, tensorboard, config.yaml, metrics.json, final.safetensors); "
        "continue it with --resume auto, or start a new one with another --run-dir (or --overwrite, which moves the "
        "old run aside)")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("entry", ["metrics.json", "final.safetensors", "final_ema.safetensors", "config.yaml"])
def test_any_part_of_a_run_is_enough_to_refuse(tmp_path, entry):
    (tmp_path / entry).write_text("x")
    with pytest.raises(RunDirError, match=f"already holds a run \\({entry}\\)"):
        claim(tmp_path, resume=False, overwrite=False, rank=1)


def test_what_is_no_part_of_a_run_does_not_count(tmp_path):
    for name in ("data", "eval", "replaced-20260101-000000", "checkpoints", "tensorboard"):
        (tmp_path / name).mkdir()  # the subset cache, evaluate's results, a replaced run; empty folders
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    claim(tmp_path, resume=False, overwrite=False, rank=0)


def test_resume_auto_takes_the_run_with_a_latest_pointer(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    before = snapshot(run_dir)
    claim(run_dir, resume=True, overwrite=False, rank=0)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("leftover", [None, "crashed before its first checkpoint"])
def test_resume_auto_without_a_checkpoint_starts_a_new_run_and_says_so(tmp_path, caplog, leftover):
    run_dir = tmp_path / "mistyped"
    if leftover:
        (run_dir / "checkpoints" / "step-00000010").mkdir(parents=True)  # a save killed half-way
        (run_dir / "config.yaml").write_text("x")
        (run_dir / "metrics.json").write_text("{}")  # an evaluation at step 0, made again by the new run
        (run_dir / "tensorboard").mkdir()
        (run_dir / "tensorboard" / "events.out.tfevents.1").write_text("e")
    with caplog.at_level(logging.INFO, logger="pretrain.components.run_dir"):
        claim(run_dir, resume=True, overwrite=False, rank=0)
        claim(run_dir, resume=True, overwrite=False, rank=1)  # rank 0 says it
    assert caplog.messages == [f"no checkpoint in {run_dir / 'checkpoints'}: starting a new run"]


@pytest.mark.parametrize("lasting", ["final.safetensors", "final_ema.safetensors", "metrics.json"])
def test_resume_auto_without_latest_refuses_what_a_new_run_would_not_make_again(tmp_path, lasting):
    (tmp_path / lasting).write_text("x")  # the final weights (checkpoints deleted); evaluate's results
    with pytest.raises(RunDirError, match=f"holds a run \\({lasting}\\) but no"):
        claim(tmp_path, resume=True, overwrite=False, rank=0)


def test_resume_auto_refuses_a_run_without_latest_that_a_new_run_would_overwrite(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    (run_dir / "checkpoints" / "latest").unlink()
    with pytest.raises(RunDirError) as err:
        claim(run_dir, resume=True, overwrite=False, rank=0)
    assert str(err.value) == (
        f"{run_dir} holds a run (step-00000003, tensorboard, config.yaml, metrics.json, final.safetensors) but no "
        f"{run_dir / 'checkpoints' / 'latest'} to resume it from; start a new run with another --run-dir, or "
        "--overwrite (moves the old run aside)")


def test_overwrite_moves_the_old_run_aside_on_rank_0_only(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    (run_dir / "data").mkdir()
    before = snapshot(run_dir)
    claim(run_dir, resume=False, overwrite=True, rank=1)
    assert snapshot(run_dir) == before
    claim(run_dir, resume=False, overwrite=True, rank=0)
    [aside] = run_dir.glob("replaced-*")
    assert snapshot(aside) == before  # every byte kept, nothing copied
    assert sorted(p.name for p in run_dir.iterdir()) == ["data", aside.name]
    claim(run_dir, resume=False, overwrite=False, rank=0)  # the dir now takes a new run
    with pytest.raises(RunDirError, match="pass one"):
        claim(run_dir, resume=True, overwrite=True, rank=0)


def test_evaluate_never_writes_into_a_training_run(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        check_eval_dir(run_dir)
    assert str(err.value) == (
        f"{run_dir} holds a training run (checkpoints, tensorboard, config.yaml, final.safetensors); evaluation "
        "results go to a dir of their own: pass another --run-dir (default runs/<config name>/eval)")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")  # its own earlier results: replaced
    check_eval_dir(tmp_path / "eval")


def test_pruning_removes_only_this_runs_checkpoints(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        checkpoint(tmp_path / "run", step, run_id="other")
    checkpoint(tmp_path / "run", 3, run_id=None)  # written before checkpoints had run ids
    ours = [checkpoint(tmp_path / "run", step, run_id="mine") for step in (4, 5, 6)]
    (folder / "step-00000007").mkdir()  # a half-written save
    ckpt = Checkpointer(folder, keep=2, rank=0)
    ckpt.run_id = "mine"
    ckpt._prune(keep_tag=ours[-1])
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-00000001", "step-00000002", "step-00000003", "step-00000005", "step-00000006"]
    ckpt.run_id, ckpt.keep = None, 1  # a resumed run of before the ids: its id-less checkpoints are its own
    ckpt._prune(keep_tag=checkpoint(tmp_path / "run", 9, run_id=None))
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-00000001", "step-00000002", "step-00000005", "step-00000006", "step-00000009"]


def test_a_save_never_replaces_another_runs_checkpoint_of_the_same_step(tmp_path):
    checkpoint(tmp_path, 4, run_id="other")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="step-00000004 is a checkpoint of another run"):
        Checkpointer(tmp_path / "checkpoints", keep=2, rank=0).save(4)
    assert snapshot(tmp_path) == before


def test_a_resumed_monitor_drops_the_steps_logged_after_the_restored_one(tmp_path):
    with Monitor(tmp_path, rank=0, total_steps=6) as first:  # logged up to 5, then killed; checkpoint at 3
        for step in range(1, 6):
            first.log_scalars(step, {"train/loss": float(step)})
    with Monitor(tmp_path, rank=0, total_steps=6) as resumed:
        resumed.open(first_step=4)
        for step in range(4, 7):
            resumed.log_scalars(step, {"train/loss": 10.0 * step})
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_a_rerun_is_refused_untouched_then_resumed_keeping_the_right_checkpoints_and_tensorboard_steps(tmp_path):
    """A real run (1 process, 4 steps, checkpoints at 2 and 4, keep 2, a metrics.json). Started again in its dir with
    another optim.lr: exit 2, one line, every byte kept; an evaluation into it too. Resumed from step 2 (as if
    killed after logging step 4, before `latest` moved): each TensorBoard step once, steps 3-8 from the resumed
    process; pruning keeps its newest two checkpoints and a foreign one."""
    shards = build_digits(tmp_path / "digits")
    cfg = str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {
        "data.train": str(shards), "data.workers": 1, "train.steps": 4, "checkpoint.every_steps": 2,
        "checkpoint.keep": 2, "logging.every_steps": 1, "logging.image_every_steps": 0,
        "evals.val.type": "classification", "evals.val.data": str(shards)}))
    run_dir = tmp_path / "run"
    first = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(run_dir))
    assert first.returncode == 0, failure(first)
    assert (run_dir / "metrics.json").is_file()
    before = snapshot(run_dir)

    again = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(run_dir), "--set", "optim.lr=0.001")
    assert again.returncode == 2, failure(again)
    assert again.stderr.strip().splitlines() == [
        f"error: {run_dir} already holds a run (step-00000004, tensorboard, config.yaml, metrics.json, "
        "final.safetensors); continue it with --resume auto, or start a new one with another --run-dir (or "
        "--overwrite, which moves the old run aside)"], failure(again)
    assert snapshot(run_dir) == before
    evaluate = run("launch/evaluate.py", 1, "--config", "configs/finetune/demo.yaml", "--checkpoint", str(run_dir),
                   "--run-dir", str(run_dir))
    assert evaluate.returncode == 2 and "holds a training run" in evaluate.stderr, failure(evaluate)
    assert snapshot(run_dir) == before

    checkpoints = run_dir / "checkpoints"
    run_id = json.loads((checkpoints / "step-00000004" / "meta.json").read_text())["run_id"]
    (checkpoints / "latest").write_text("step-00000002\n")
    foreign = checkpoint(run_dir, 1, run_id="another run")
    started = time.time()
    resumed = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(run_dir), "--resume", "auto",
                  "--set", "train.steps=8")
    assert resumed.returncode == 0, failure(resumed)
    assert "resumed from step 2" in resumed.stdout + resumed.stderr
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [foreign, "step-00000006", "step-00000008"]
    assert (checkpoints / "latest").read_text() == "step-00000008\n"
    assert {json.loads((checkpoints / t / "meta.json").read_text())["run_id"]
            for t in ("step-00000006", "step-00000008")} == {run_id}

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 9))
    assert [e.wall_time >= started for e in events] == [False, False] + [True] * 6


def test_two_ranks_refuse_alike_before_either_writes(tmp_path):
    """Each rank decides from the file system before the process group starts (first of all the checks): two ranks
    as torchrun starts them, stopped before they would meet."""
    run_dir = finished_run(tmp_path / "run")
    before = snapshot(run_dir)
    cfg = str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {"data.train": str(tmp_path / "no data")}))
    torchrun = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    ranks = [subprocess.Popen([sys.executable, PRETRAIN, "--config", cfg, "--run-dir", str(run_dir)], cwd=ROOT,
                              env={**env(), **torchrun, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = [(p.wait(timeout=300), p.stderr.read().strip().splitlines()[-1]) for p in ranks]
    message = (f"error: {run_dir} already holds a run (step-00000003, tensorboard, config.yaml, metrics.json, "
               "final.safetensors); continue it with --resume auto, or start a new one with another --run-dir (or "
               "--overwrite, which moves the old run aside)")
    assert errors == [(2, f"[rank 0] {message}"), (2, f"[rank 1] {message}")]
    assert snapshot(run_dir) == before
