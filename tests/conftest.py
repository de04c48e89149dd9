"""Fixtures built once per test session and shared by every test file that needs them (read-only: a test that
changes a run copies it first).

- `digits`: the demo's digits shards, train and val, as the data_prep CLI writes them; `shards` is the train half.
- `pretrained_demo`: a finished 1-process demo pretraining run on them (40 steps), the starting point of the
  fine-tune, evaluation and resume tests, with the config it ran with.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers_runs import build_digits, failure, run, write_config


class DemoRun(NamedTuple):
    """A finished run and the config file it was launched with (resume it with the same one)."""

    run_dir: Path
    config: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    return build_digits(root / "train"), build_digits(root / "val", split="val")


@pytest.fixture(scope="session")
def shards(digits) -> Path:
    return digits[0]


@pytest.fixture(scope="session")
def pretrained_demo(tmp_path_factory, digits) -> DemoRun:
    """configs/demo.yaml, 40 steps at lr 0.004 on one process: features good enough to fine-tune and few-shot from;
    its only checkpoint is the one at the last step."""
    tmp = tmp_path_factory.mktemp("pretrained_demo")
    cfg = write_config(tmp / "pre.yaml", "configs/demo.yaml", {
        "data.train": str(digits[0]), "train.steps": 40, "optim.lr": 0.004, "checkpoint.every_steps": 1000,
        "logging.image_every_steps": 0, "data.workers": 1})
    proc = run("launch/pretrain.py", 1, "--config", str(cfg), "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return DemoRun(tmp / "run", cfg)
