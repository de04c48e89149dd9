"""The demo's summary says which weights, at which resolution, each figure is of, and where everything is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from launch.demo import summary
from launch.local import BIN, ROOT


def fake_run(root: Path, name: str, img_size: int, metrics: dict) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"img_size": img_size}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_each_figure_names_its_weights_and_resolution(tmp_path):
    shot = {"5shot": {"mean": 0.965}}
    pre = fake_run(tmp_path, "demo", 32, {"history": [{"name": "val", "step": 300},
                                                      {"name": "fewshot", "step": 300, "fewshot": shot}]})
    ft = fake_run(tmp_path, "demo-finetune", 64, {
        "top1": 0.9, "top5": 1.0, "num_samples": 359,
        "evals": {"fewshot_init": {"fewshot": {"5shot": {"mean": 0.5896}}}, "fewshot": {"fewshot": shot}}})
    assert summary(pre, ft) == [
        f"pretraining ({pre}, 32 px): 5-shot linear accuracy of the weights being trained, on the validation digits "
        "at 32 px: step 300: 96.5%",
        f"fine-tuned weights ({ft}/final.safetensors) at 64 px: top-1 90.00%, top-5 100.00% on 359 validation digits",
        f"few-shot linear accuracy of the pretrained weights ({pre}/final.safetensors) expanded to 64 px, before "
        "fine-tuning (mean over seeds): 5shot 58.96%",
        f"few-shot linear accuracy of the fine-tuned weights ({ft}/final.safetensors) at 64 px (mean over seeds): "
        "5shot 96.50%",
        f"metrics: {pre}/metrics.json, {ft}/metrics.json",
        f"TensorBoard: {os.path.relpath(BIN / 'tensorboard', ROOT)} --logdir runs/"]
    assert (BIN / "tensorboard").is_file()  # the command works as printed
