"""Checks of the config that need what the run finds at start: the data's size, the derived run length.

They run once the manifest is read and the run length resolved, before the model and the DeepSpeed engine are
built, so a bad value is one line (a ConfigError, or a logged warning), not a traceback minutes into the run.

- `check_workers(manifest, cfg, world_size)`: each epoch is cut into T = V x W contiguous ranges of the shards'
  concatenation (V = train.global_batch / train.micro_batch, W = max(data.workers, 1); pretrain/data/streams.py),
  and every range must hold at least one micro-batch, else the loader's `make_layout` raises "dataset too small"
  at the first step. Ranges cross shard boundaries (streams share shards), so the shard count sets no limit; the
  samples do: W <= samples // train.global_batch.
- `check_warmup(length, cfg)`: a warmup at least as long as the run is a warning, not an error (see its doc).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pretrain.config.batch import check_against_world
from pretrain.config.errors import ConfigError
from pretrain.config.schema import PretrainConfig

if TYPE_CHECKING:
    from pretrain.components.run_length import RunLength
    from pretrain.data.manifest import Manifest

log = logging.getLogger(__name__)


def max_workers(num_samples: int, global_batch: int) -> int:
    """The most loader workers per rank whose T = V x W streams each get a micro-batch per epoch (0: none works).

    floor(N / (V W)) >= m  <=>  N >= V W m = W x global_batch, whatever the world size (V does not depend on it).
    """
    return num_samples // global_batch


def check_workers(manifest: Manifest, cfg: PretrainConfig, world_size: int) -> None:
    """Raise a ConfigError naming `data.workers` (and the largest value that works) when the training data cannot
    give each of the T = V x W streams one micro-batch per epoch; naming `train.global_batch` when no worker count
    can (fewer samples than one global batch). `manifest`: what the run reads (the subset when there is one)."""
    accum = check_against_world(cfg, world_size)
    t, n = cfg.train, manifest.num_samples
    virtual = accum * world_size
    workers = max(cfg.data.workers, 1)  # 0 workers: the main process reads one stream per virtual rank
    streams = virtual * workers
    if n // streams >= t.micro_batch:
        return
    what = f"the {n} training samples of {cfg.data.train}"
    if max_workers(n, t.global_batch) == 0:
        per = t.micro_batch * world_size
        fix = (f"use train.global_batch <= {n // per * per} (a multiple of train.micro_batch x world size = {per})"
               if n >= per else f"use a train.micro_batch of at most {n // world_size}, or more data")
        raise ConfigError(
            f"`train.global_batch`: {t.global_batch} is more than {what}: each of its {virtual} micro-batches per "
            f"step reads its own range of every epoch, which would hold {n // virtual} samples, fewer than "
            f"train.micro_batch {t.micro_batch}; {fix}")
    raise ConfigError(
        f"`data.workers`: {cfg.data.workers} is too many for {what}: {virtual} micro-batches per step x "
        f"{workers} workers = {streams} streams of {_samples(n // streams)} per epoch, fewer than train.micro_batch "
        f"{t.micro_batch}; use data.workers <= {max_workers(n, t.global_batch)} (samples // train.global_batch)")


def _samples(count: int) -> str:
    return f"{count} sample" if count == 1 else f"{count} samples"


def warmup_problem(length: RunLength, cfg: PretrainConfig) -> str | None:
    """The warning `check_warmup` logs, or None when the warmup is shorter than the run."""
    if length.warmup_steps < length.steps:
        return None
    s, t = cfg.schedule, cfg.train
    if s.warmup_epochs > 0:
        key, warmup = "schedule.warmup_epochs", f"{s.warmup_epochs!r} gives {length.warmup_steps} warmup steps, which"
    else:
        key, warmup = "schedule.warmup_steps", f"{length.warmup_steps}"
    run = f"train.epochs {t.epochs!r} gives {length.steps}" if t.epochs > 0 else f"train.steps is {length.steps}"
    peak = "reaches optim.lr only at the last step" if length.warmup_steps == length.steps else (
        f"only ramps up to {length.steps}/{length.warmup_steps} of optim.lr")
    return (f"`{key}`: {warmup} is not shorter than the run ({run}): the learning rate {peak} and never "
            f"decays; set {key} below the run's length (unless this is a smoke run)")


def check_warmup(length: RunLength, cfg: PretrainConfig) -> str | None:
    """Log a one-line warning when the warmup is at least as long as the run; return it (None: no problem).

    A warning, not an error: such a run does not fail (`lr_factor` ramps for the whole run, the checkpoints and a
    resume work), and short smoke runs are written this way on purpose - the schema's own defaults are 1000 steps
    with a 10000-step warmup, and `--set train.steps=5` on a config with a 20-step warmup is how the demo and
    study configs are tried. An error would refuse all of those; the warning still names the key of a real mistake.
    """
    problem = warmup_problem(length, cfg)
    if problem is not None:
        log.warning("%s", problem)
    return problem
