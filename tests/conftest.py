"""Fixtures built once per test run and shared by every test file that needs them (read-only: a test that changes a
run copies it first).

- `digits`: the demo's digits shards, train and val, as the data_prep CLI writes them; `shards` is the train half.
- `pretrained_demo`: a finished 1-process demo pretraining run on them (40 steps), the starting point of the
  fine-tune, evaluation and resume tests, with the config it ran with.

Under pytest-xdist (`make test` runs two workers) the first worker to need one builds it into the run's shared temp
folder while the other waits on a lock, so each is still built once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from filelock import FileLock

from tests.helpers_runs import build_digits, failure, run, write_config


class DemoRun(NamedTuple):
    """A finished run and the config file it was launched with (resume it with the same one)."""

    run_dir: Path
    config: Path


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `name` that `build` filled, once per test run: shared by the xdist workers of the run."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the workers' basetemps are its siblings
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed to build it left
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = built_once(tmp_path_factory, "digits", lambda root: [build_digits(root / "train"),
                                                                build_digits(root / "val", split="val")])
    return root / "train", root / "val"


@pytest.fixture(scope="session")
def shards(digits) -> Path:
    return digits[0]


@pytest.fixture(scope="session")
def pretrained_demo(tmp_path_factory, digits) -> DemoRun:
    """configs/demo.yaml, 40 steps at lr 0.004 on one process: features good enough to fine-tune and few-shot from;
    its only checkpoint is the one at the last step."""

    def build(tmp: Path) -> None:
        cfg = write_config(tmp / "pre.yaml", "configs/demo.yaml", {
            "data.train": str(digits[0]), "train.steps": 40, "optim.lr": 0.004, "checkpoint.every_steps": 1000,
            "logging.image_every_steps": 0, "data.workers": 1})
        proc = run("launch/pretrain.py", 1, "--config", str(cfg), "--run-dir", str(tmp / "run"))
        assert proc.returncode == 0, failure(proc)

    tmp = built_once(tmp_path_factory, "pretrained_demo", build)
    return DemoRun(tmp / "run", tmp / "pre.yaml")
