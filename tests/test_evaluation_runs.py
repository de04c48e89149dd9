"""Evaluators in real runs, launched as users launch them (deepspeed, 2 gloo CPU ranks).

Pinned: a pretraining run logs its classification and few-shot evaluators at their own cadence and at the end (to
TensorBoard and metrics.json); a 2-rank ZeRO-3 run whose ranks have uneven evaluation shares, under tight stage3_*
settings, finishes and counts every sample once; the few-shot numbers do not depend on the workers or the world
size; the logged lr is the lr of that step's update; the skipped-sample counter is what the data position counted;
a resumed EMA is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.components.schedule import lr_factor
from pretrain.config import ScheduleConfig
from tests.helpers_runs import failure, run, scalars, write_config
from tests.helpers_shards import sample, write_dataset

PRETRAIN, EVALUATE = "launch/pretrain.py", "launch/evaluate.py"
VAL_SAMPLES = 359


def pretrain_config(tmp_path: Path, train: Path, **overrides) -> str:
    base = {"data.train": str(train), "logging.every_steps": 1, "logging.image_every_steps": 0,
            "checkpoint.every_steps": 1000, "data.workers": 1}
    return str(write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {**base, **overrides}))


def evals(digits, every_val: int, every_fewshot: int, batch_size: int = 100) -> dict:
    train, val = digits
    return {"evals": {
        "val": {"type": "classification", "data": str(val), "every_steps": every_val, "batch_size": batch_size},
        "fewshot": {"type": "fewshot", "train": str(train), "val": str(val), "shots": [1, 5], "seeds": [0, 1],
                    "every_steps": every_fewshot, "batch_size": batch_size}}}


def config_text(run_dir: Path) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("config/text_summary")
    return event.tensor_proto.string_val[0].decode()


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_pretraining_runs_each_evaluator_at_its_cadence_and_at_the_end(tmp_path, digits):
    cfg = pretrain_config(tmp_path, digits[0], **{"train.steps": 14, "logging.every_steps": 7},
                          **evals(digits, every_val=5, every_fewshot=7))
    proc = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    tags = scalars(tmp_path / "run")
    assert [s for s, _ in tags["eval/val/top1"]] == [5, 10, 14]  # its cadence, then the end
    assert [s for s, _ in tags["eval/fewshot/5shot"]] == [7, 14]
    assert {"eval/val/top5", "eval/val/loss", "eval/fewshot/1shot", "train/epoch", "train/samples_seen"} <= set(tags)
    assert [v for _, v in tags["train/samples_seen"]] == [7 * 64, 14 * 64]
    result = metrics(tmp_path / "run")
    assert [(r["step"], r["name"]) for r in result["history"]] == [  # by step; at one step in config order
        (5, "val"), (7, "fewshot"), (10, "val"), (14, "fewshot"), (14, "val")]
    assert result["num_samples"] == VAL_SAMPLES and result["step"] == 14
    assert [v for _, v in tags["eval/val/top1"]][-1] == pytest.approx(result["top1"])
    assert set(result["fewshot"]) == {"1shot", "5shot"} and result["fewshot_weights"] == "trained"
    text = config_text(tmp_path / "run")  # the resolved config, so runs can be told apart in TensorBoard
    assert "global_batch: 64" in text and f"data: {digits[1]}" in text


def test_zero3_evaluation_with_uneven_rank_shares_finishes_and_counts_every_sample_once(tmp_path, digits):
    # 359 samples, batch 179: rank 0 reads 180 (two batches), rank 1 reads 179 (one). Nothing is kept whole.
    tight = {"zero_optimization": {"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0,
                                   "stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0}}
    cfg = pretrain_config(tmp_path, digits[0], **{"train.steps": 4, "train.zero_stage": 3, "deepspeed": tight},
                          **evals(digits, every_val=2, every_fewshot=2, batch_size=179))
    proc = run(PRETRAIN, 2, "--config", cfg, "--run-dir", str(tmp_path / "run"), timeout=300)
    assert proc.returncode == 0, failure(proc)
    result = metrics(tmp_path / "run")
    assert [(r["step"], r["name"]) for r in result["history"]] == [
        (2, "fewshot"), (2, "val"), (4, "fewshot"), (4, "val")]
    assert all(r["num_samples"] == VAL_SAMPLES for r in result["history"] if r["name"] == "val")
    assert sum(c is not None for c in result["per_class_accuracy"]) == 10


def test_fewshot_results_do_not_depend_on_workers_or_world_size(tmp_path, digits, pretrained_demo):
    ft = write_config(tmp_path / "ft.yaml", "configs/finetune/demo.yaml", {
        "model.img_size": 32, "data.train": str(digits[0]), "data.val": str(digits[1]), "train.precision": "fp32",
        "fewshot.shots": [1, 5], "fewshot.seeds": [0, 1, 2]})
    results = {}
    for ranks, workers in ((1, 1), (1, 2), (2, 1)):
        out = tmp_path / f"eval-{ranks}-{workers}"
        proc = run(EVALUATE, ranks, "--config", str(ft), "--checkpoint", str(pretrained_demo.run_dir), "--fewshot",
                   "--run-dir", str(out), "--set", f"data.workers={workers}")
        assert proc.returncode == 0, failure(proc)
        results[ranks, workers] = metrics(out)["fewshot"]
    first = results[1, 1]
    assert all(r == first for r in results.values()), results


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, digits) -> tuple[str, Path]:
    """A 1-process run of 12 steps (checkpoints at 6 and 12) with an EMA, the sigmoid loss and 3 warmup steps, and
    its config: the logged lr, and the uninterrupted EMA a resumed one must equal."""
    tmp = tmp_path_factory.mktemp("ema")
    cfg = pretrain_config(tmp, digits[0], **{"train.steps": 12, "checkpoint.every_steps": 6, "checkpoint.keep": 2,
                                             "ema.decay": 0.9, "schedule.warmup_steps": 3, "optim.lr": 0.002,
                                             "train.loss": "sigmoid_xent"})
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return cfg, tmp / "run"


def test_logged_lr_is_the_lr_of_that_steps_update(ema_run):
    schedule = ScheduleConfig(name="cosine", warmup_steps=3)
    tags = scalars(ema_run[1])
    # The head starts at zero: every logit is 0, so the sigmoid loss is 10 classes x ln 2 on the first step.
    assert tags["train/loss"][0][1] == pytest.approx(10 * math.log(2), rel=1e-6)
    logged = tags["train/lr"]
    assert [s for s, _ in logged] == list(range(1, 13))
    for step, lr in logged:  # step k is logged after the update made at 0-based step k - 1
        assert lr == pytest.approx(0.002 * lr_factor(step - 1, 12, schedule), rel=1e-6), step


def test_skipped_samples_is_the_count_of_corrupt_samples_the_data_position_recorded(tmp_path):
    planted = {g: sample(f"s{g:05d}", b"not a jpeg", g % 10) for g in (3, 50, 77, 120, 181)}
    manifest = write_dataset(str(tmp_path / "data"), [100, 100], size=(32, 32), replace=planted)
    cfg = pretrain_config(tmp_path, Path(manifest).parent, **{"train.steps": 9, "checkpoint.every_steps": 9})
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    logged = scalars(tmp_path / "run")["train/skipped_samples"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000009" / "mp_rank_00_model_states.pt",
                       weights_only=False)
    recorded = sum(s["corrupt"] for s in state["data"]["streams"].values())
    assert logged[-1] == (9, float(recorded))
    assert len(planted) <= recorded <= 3 * len(planted)  # 9 steps of 64 are about 3 epochs of 200 samples


def test_resumed_ema_is_bit_identical_to_an_uninterrupted_one(tmp_path, ema_run):
    cfg = ema_run[0]
    shutil.copytree(ema_run[1], tmp_path / "run")
    uninterrupted = load_file(tmp_path / "run" / "final_ema.safetensors")
    trained = load_file(tmp_path / "run" / "final.safetensors")
    assert any(not torch.equal(uninterrupted[k], trained[k]) for k in trained)  # the EMA is not the weights
    ckpts = tmp_path / "run" / "checkpoints"
    shutil.rmtree(ckpts / "step-00000012")
    (ckpts / "latest").write_text("step-00000006\n")  # as if killed after the step-6 checkpoint
    for name in ("final.safetensors", "final_ema.safetensors"):
        (tmp_path / "run" / name).unlink()
    proc = run(PRETRAIN, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"), "--resume", "auto")
    assert proc.returncode == 0, failure(proc)
    resumed = load_file(tmp_path / "run" / "final_ema.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert all(torch.equal(load_file(tmp_path / "run" / "final.safetensors")[k], trained[k]) for k in trained)
