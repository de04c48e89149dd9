"""A timm backbone (ConViT-Tiny, 32 px, patch 4) through the real pipeline on the digits shards.

Pinned: 2-rank bf16 ZeRO-1 pretraining logs MFU and the GPSA layers' gating and nonlocality, skips the Mixer-only
weight pictures, and writes checkpoints and final.safetensors that load strictly into a fresh model; fine-tuning
that run at 48 px through launch/finetune.py resamples the position embedding; launch/evaluate.py reproduces its
metrics exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.models import create_model
from tests.helpers_runs import failure, final_weights, image_tags, run, scalars, write_config

PRETRAIN, FINETUNE, EVALUATE = "launch/pretrain.py", "launch/finetune.py", "launch/evaluate.py"
MODEL = {"model.name": "convit_tiny", "model.patch_size": 4, "data.workers": 1, "logging.every_steps": 1,
         "train.global_batch": 32, "train.micro_batch": 16}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, digits) -> Path:
    tmp = tmp_path_factory.mktemp("pre")
    cfg = write_config(tmp / "pre.yaml", "configs/demo.yaml", {
        **MODEL, "data.train": str(digits[0]), "train.steps": 4, "checkpoint.every_steps": 2,
        "checkpoint.keep": 2, "logging.image_every_steps": 2})
    proc = run(PRETRAIN, 2, "--config", str(cfg), "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return tmp / "run"


def test_pretraining_logs_mfu_and_writes_loadable_weights(pretrained):
    tags = scalars(pretrained)
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4]
    assert all(v > 0 for _, v in tags["train/mfu"])
    assert image_tags(pretrained) == []  # weight pictures are Mixer-only
    final = load_file(pretrained / "final.safetensors")
    for layer in range(10):  # convit_tiny: 10 GPSA blocks of 4 heads, logged at every logging step
        gating = torch.sigmoid(final[f"blocks.{layer}.attn.gating_param"])
        assert [s for s, _ in tags[f"convit/gating/layer{layer}"]] == [1, 2, 3, 4]
        for head in range(4):  # the bf16 module's values at step 4 against the fp32 master weights
            assert tags[f"convit/gating/layer{layer}/head{head}"][-1][1] == pytest.approx(gating[head].item(), abs=4e-3)
        assert all(0.0 < v < 98**0.5 for _, v in tags[f"convit/nonlocality/layer{layer}"])  # within the 8x8 grid
    assert "convit/gating/layer10" not in tags
    files = [pretrained / "final.safetensors"] + [
        pretrained / "checkpoints" / tag / "model.safetensors" for tag in ("step-00000002", "step-00000004")]
    model = create_model("convit_tiny", num_classes=10, img_size=32, patch_size=4)
    for path in files:
        state = load_file(path)
        model.load_state_dict(state)  # strict: exactly the model's keys and shapes
        assert all(v.dtype == torch.float32 for v in state.values())


def test_finetune_at_48px_and_evaluate_reproduces_its_metrics(tmp_path, digits, pretrained):
    cfg = str(write_config(tmp_path / "ft.yaml", "configs/finetune/demo.yaml", {
        **MODEL, "data.train": str(digits[0]), "data.val": str(digits[1]), "init.path": str(pretrained),
        "model.img_size": 48, "train.steps": 2, "checkpoint.every_steps": 1000, "fewshot.enabled": False}))
    proc = run(FINETUNE, 1, "--config", cfg, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    assert "pos_embed_grids=((8, 8), (12, 12)), head_dropped=False" in proc.stderr, failure(proc)
    assert final_weights(tmp_path / "run")["pos_embed"].shape == (1, 144, 192)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert trained["num_samples"] == 359

    proc = run(EVALUATE, 1, "--config", cfg, "--checkpoint", str(tmp_path / "run"), "--run-dir", str(tmp_path / "ev"))
    assert proc.returncode == 0, failure(proc)
    ours = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (ours["num_samples"], ours["top1"], ours["top5"]) == (359, trained["top1"], trained["top5"])
    assert ours["loss"] == pytest.approx(trained["loss"], rel=1e-6)
