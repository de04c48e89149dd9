"""Real pretraining runs on the digits shards, launched as users launch them (deepspeed, 2 gloo CPU ranks).

Pinned: the demo model learns and logs every TensorBoard tag; 2 ranks x micro-batch m equal 1 rank x m x 2
accumulation steps (ZeRO 0 and 2); ZeRO-3 trains, saves and resumes; kill -9 then `--resume auto` ends bit-identical
to an uninterrupted run; SIGUSR1 checkpoints and exits 75; non-finite losses stop the run with its last good
checkpoint; user mistakes are one line with exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.components.checkpoint import Checkpointer, resolve_weights
from pretrain.models import create_model, load_weights
from tests.helpers_runs import failure, final_weights, image_tags, run, scalars, start, write_config

PRETRAIN = "launch/pretrain.py"
TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/mfu", "train/data_wait_frac",
        "train/skipped_samples", "sys/rss_bytes"}


def config(tmp_path: Path, shards: Path, name: str = "cfg.yaml", **overrides) -> str:
    base = {"data.train": str(shards), "logging.every_steps": 1, "logging.image_every_steps": 0,
            "checkpoint.every_steps": 1000, "data.workers": 1}
    return str(write_config(tmp_path / name, "configs/demo.yaml", {**base, **overrides}))


def losses(run_dir: Path) -> list[float]:
    return [v for _, v in scalars(run_dir)["train/loss"]]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, shards) -> tuple[str, Path]:
    """A 2-rank run of 60 steps (checkpoints at 30 and 60) and its config: the test that it learns, and the
    uninterrupted run a killed and resumed one must end equal to."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    cfg = config(tmp, shards, **{"train.steps": 60, "optim.lr": 0.004, "schedule.warmup_steps": 5,
                                 "logging.image_every_steps": 30, "checkpoint.every_steps": 30,
                                 "checkpoint.keep": 1})
    proc = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return cfg, tmp / "run"


def test_two_ranks_learn_log_every_tag_and_export(two_ranks):
    run_dir = two_ranks[1]
    curve = losses(run_dir)
    assert len(curve) == 60
    assert curve[0] > 2.2 and sum(curve[-10:]) / 10 < 1.7, curve  # chance is ln 10 = 2.30
    assert TAGS <= set(scalars(run_dir)), sorted(scalars(run_dir))
    assert image_tags(run_dir) == ["weights/token_mixing"]
    assert (run_dir / "config.yaml").is_file()
    assert Checkpointer(run_dir / "checkpoints", keep=3, rank=0).latest_tag() == "step-00000060"
    model = create_model("mixer_demo", num_classes=10, img_size=32)
    load_weights(model, run_dir / "final.safetensors")
    assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))).all()


@pytest.fixture(scope="module")
def one_rank_accumulating(tmp_path_factory, shards) -> Path:
    """The reference: one process, micro-batch 32, 2 accumulation steps, fp32."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = config(tmp, shards, **{"train.steps": 6, "train.precision": "fp32", "train.zero_stage": 0})
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return tmp / "run"


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_two_ranks_equal_one_rank_with_accumulation(tmp_path, shards, one_rank_accumulating, zero_stage):
    cfg = config(tmp_path, shards, **{"train.steps": 6, "train.precision": "fp32", "train.zero_stage": zero_stage})
    proc = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    assert losses(tmp_path / "run") == pytest.approx(losses(one_rank_accumulating), abs=1e-5)
    ours, ref = final_weights(tmp_path / "run"), final_weights(one_rank_accumulating)
    assert ours.keys() == ref.keys()
    assert max((ours[k] - ref[k]).abs().max().item() for k in ref) < 1e-5


def test_zero3_trains_saves_and_resumes(tmp_path, shards):
    cfg = config(tmp_path, shards, **{"train.zero_stage": 3, "train.steps": 4, "checkpoint.every_steps": 2})
    first = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert first.returncode == 0, failure(first)
    second = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto",
                 "--set", "train.steps=6")
    assert second.returncode == 0, failure(second)
    assert "resumed from step 4" in second.stderr + second.stdout
    steps = [s for s, _ in scalars(tmp_path / "run")["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6]
    model = create_model("mixer_demo", num_classes=10, img_size=32)
    load_weights(model, tmp_path / "run" / "final.safetensors")  # full shapes, gathered from the partitions


def test_kill9_then_resume_equals_uninterrupted(tmp_path, two_ranks):
    cfg, reference = two_ranks  # the uninterrupted run
    victim = start(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto")
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert latest.exists() and not (tmp_path / "run" / "final.safetensors").exists(), "killed too late"

    resumed = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto")
    assert resumed.returncode == 0, failure(resumed)
    ours, ref = final_weights(tmp_path / "run"), final_weights(reference)
    assert all(torch.equal(ours[k], ref[k]) for k in ref), "resumed weights differ from the uninterrupted run"


def test_sigusr1_checkpoints_exits_75_and_resumes(tmp_path, shards):
    cfg = config(tmp_path, shards, **{"train.steps": 400, "checkpoint.every_steps": 5})
    job = start(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=120) == 75
    tag = latest.read_text().strip()
    stopped_at = int(tag.split("-")[1])
    assert 5 <= stopped_at < 400 and not (tmp_path / "run" / "final.safetensors").exists()
    weights = resolve_weights(tmp_path / "run")  # an unfinished run still serves as a fine-tune init
    assert weights == tmp_path / "run" / "checkpoints" / tag / "model.safetensors"
    load_weights(create_model("mixer_demo", num_classes=10, img_size=32), weights)
    resumed = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto",
                  "--set", f"train.steps={stopped_at + 2}")
    assert resumed.returncode == 0, failure(resumed)
    assert f"resumed from step {stopped_at}" in resumed.stderr + resumed.stdout


@pytest.mark.parametrize("zero_stage", [0, 1])  # our own check of the gradient norm; DeepSpeed's skip
def test_non_finite_losses_stop_with_last_good_checkpoint(tmp_path, shards, zero_stage):
    cfg = config(tmp_path, shards, **{"train.steps": 30, "train.precision": "fp32", "optim.lr": 1.0e6,
                                      "schedule.warmup_steps": 0, "train.max_bad_steps": 3,
                                      "checkpoint.every_steps": 1, "train.zero_stage": zero_stage})
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2, failure(proc)
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: 3 steps in a row had a non-finite loss"), message
    bad = [s for s, v in scalars(tmp_path / "run")["train/loss"] if v != v]
    tag = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert int(tag.split("-")[1]) < min(bad, default=31)
    assert tag in message


def test_user_mistakes_are_one_line_with_status_2(tmp_path, shards):
    typo = run(PRETRAIN, 1, "--config", config(tmp_path, shards), "--set", "optim.lrr=1")
    assert (typo.returncode, typo.stderr.strip()) == (2, "error: `optim.lrr`: unknown key; did you mean `optim.lr`?")
    missing = run(PRETRAIN, 1, "--config", config(tmp_path, tmp_path / "nowhere", name="missing.yaml"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr.strip().splitlines()[-1], failure(missing)
    assert "Traceback" not in missing.stderr
    fp16 = run(PRETRAIN, 1, "--config", config(tmp_path, shards), "--set", "train.precision=fp16")
    assert (fp16.returncode, fp16.stderr.strip().splitlines()[-1]) == (
        2, "error: `train.precision`: 'fp16' is not supported by DeepSpeed on a CPU; use bf16 or fp32")


def test_checkpoint_of_another_model_is_refused(tmp_path, pretrained_demo):
    cfg = str(pretrained_demo.config)
    shutil.copytree(pretrained_demo.run_dir, tmp_path / "run")  # a finished run, its checkpoint at step 40
    other = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto",
                "--set", "model.name=mixer_s32", "model.img_size=64")
    assert other.returncode == 2, failure(other)
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-00000040'} was written with "
        "model='mixer_demo', this run has model='mixer_s32'; resume with the same setting or start a new run dir")
    shuffled = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto",
                   "--set", "augment.permute=patches")
    assert shuffled.returncode == 2, failure(shuffled)
    assert "was written with permute=None, this run has permute=['patches', 0, 4]" in shuffled.stderr


def test_subset_run_in_epochs_saves_resolved_steps_and_refuses_another_subset_on_resume(tmp_path, shards):
    full = json.loads((shards / "manifest.json").read_text())["num_samples"]
    cfg = config(tmp_path, shards, **{"data.subset_fraction": 0.1, "train.epochs": 0.1, "train.steps": 999,
                                      "schedule.warmup_epochs": 0.05, "train.precision": "fp32",
                                      "train.zero_stage": 0})
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    steps = math.ceil(0.1 * full / 64)
    assert (saved["train"]["steps"], saved["train"]["epochs"]) == (steps, 0.1)
    assert saved["schedule"]["warmup_steps"] == math.floor(0.05 * full / 64 + 0.5)
    assert len(losses(tmp_path / "run")) == steps
    cache = json.loads((tmp_path / "run" / "data" / "subset-0.1-seed0.json").read_text())
    assert sum(cache["kept_per_class"]) == sum(map(len, cache["selections"])) < full // 8
    other = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto",
                "--set", "data.subset_fraction=0.2", "train.epochs=0.2")
    assert other.returncode == 2, failure(other)
    message = other.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: cannot resume the data order: it was saved with subset={cache['name']} "
                              "(data.subset_fraction / data.subset_seed), this run has subset=0.2/seed0/"), message


def _catches(pid: int, signum: int) -> bool:
    """True once the process has a handler for `signum` (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


def test_sigusr1_in_the_first_second_is_kept_until_the_first_step(tmp_path, shards):
    cfg = config(tmp_path, shards, **{"train.steps": 400, "checkpoint.every_steps": 100})
    job = start(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    deadline = time.monotonic() + 30
    while not _catches(job.pid, signal.SIGUSR1) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not (tmp_path / "run" / "tensorboard").exists()  # still importing: long before the process group
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=300) == 75
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000001"


def test_a_resume_after_the_last_checkpoint_writes_the_missing_final_weights(tmp_path, pretrained_demo):
    cfg = str(pretrained_demo.config)
    shutil.copytree(pretrained_demo.run_dir, tmp_path / "run")  # a finished run, its last checkpoint at train.steps
    final = final_weights(tmp_path / "run")
    (tmp_path / "run" / "final.safetensors").unlink()  # as if killed between the last checkpoint and the export
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto")
    assert proc.returncode == 0, failure(proc)
    again = final_weights(tmp_path / "run")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
