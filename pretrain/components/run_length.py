"""Run length in epochs: `train.epochs` and `schedule.warmup_epochs` turned into optimizer steps, computed and
passed on (the loaded config is never rewritten).

Epochs count passes over the FULL training set (the manifest's `num_samples`), whatever `data.subset_fraction`
is: a subset run of E epochs sees as many images as the full run of E epochs, i.e. E / fraction passes over its
subset, the papers' data-efficiency protocol. steps = ceil(epochs x N / global_batch), warmup rounded half up;
the arithmetic is exact for the decimal the user wrote (0.1 is 1/10, not a binary approximation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

from pretrain.config import PretrainConfig

log = logging.getLogger(__name__)


def _images(epochs: float, samples: int, global_batch: int) -> Fraction:
    """epochs x samples / global_batch, exactly, in steps."""
    return Fraction(repr(epochs)) * samples / global_batch


@dataclass(frozen=True)
class RunLength:
    """Optimizer steps of the run and of its warmup, as derived from the config and the data."""

    steps: int
    warmup_steps: int


def resolve_run_length(cfg: PretrainConfig, full_samples: int, samples: int) -> RunLength:
    """`train.steps` / `schedule.warmup_steps`, or the steps of `train.epochs` / `schedule.warmup_epochs` when those
    are > 0; `cfg` is left as it is. `samples`: what the run reads per epoch (the subset), for the log line."""
    t, s = cfg.train, cfg.schedule
    steps = math.ceil(_images(t.epochs, full_samples, t.global_batch)) if t.epochs > 0 else t.steps
    warmup = s.warmup_steps
    if s.warmup_epochs > 0:
        warmup = math.floor(_images(s.warmup_epochs, full_samples, t.global_batch) + Fraction(1, 2))
    log.info("run length: %d steps of %d images = %.4g epochs of the %d training samples (%.4g passes over the "
             "%d read); warmup %d steps", steps, t.global_batch, steps * t.global_batch / full_samples,
             full_samples, steps * t.global_batch / samples, samples, warmup)
    return RunLength(steps, warmup)


def resolved_config(cfg: PretrainConfig, length: RunLength) -> PretrainConfig:
    """A copy of `cfg` holding the derived steps (what `config.yaml` records); `cfg` itself is not changed."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=length.steps),
                               schedule=dataclasses.replace(cfg.schedule, warmup_steps=length.warmup_steps))
