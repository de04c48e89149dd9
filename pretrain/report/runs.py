"""What a report reads of a run dir: its TensorBoard scalars and latest images, metrics.json and config.yaml."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.config import ConfigError

Series = list[tuple[int, float]]


@dataclass
class RunData:
    """One run as the report shows it: scalars by tag (step, value), metrics.json, the config, latest PNG images."""

    path: Path
    scalars: dict[str, Series] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: str | Path) -> RunData:
    """Read a run dir; a ConfigError naming it when it holds neither TensorBoard logs nor metrics.json."""
    path = Path(path)
    board, metrics, config = path / "tensorboard", path / "metrics.json", path / "config.yaml"
    if not board.is_dir() and not metrics.is_file():
        raise ConfigError(f"{path}: not a run dir (no tensorboard/ and no metrics.json)")
    run = RunData(path)
    if metrics.is_file():
        run.metrics = json.loads(metrics.read_text())
    if config.is_file():
        run.config = yaml.safe_load(config.read_text()) or {}
    if board.is_dir():
        run.scalars, run.images = _read_board(board)
    return run


def _read_board(board: Path) -> tuple[dict[str, Series], dict[str, bytes]]:
    """Every scalar of every event file (a resumed run's steps in order, a repeated step kept once: the last
    written), and the latest picture of each image tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(board), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    acc.Reload()
    tags = acc.Tags()
    scalars = {}
    for tag in tags["scalars"]:
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        scalars[tag] = sorted(by_step.items())
    images = {tag: acc.Images(tag)[-1].encoded_image_string for tag in tags["images"]}
    return scalars, images
