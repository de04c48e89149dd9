"""Run length in epochs: `train.epochs` and `schedule.warmup_epochs` turned into optimizer steps.

Epochs count passes over the FULL training set (the manifest's `num_samples`), whatever `data.subset_fraction`
is: a subset run of E epochs sees as many images as the full run of E epochs, i.e. E / fraction passes over its
subset, the papers' data-efficiency protocol. steps = ceil(epochs x N / global_batch), warmup rounded half up;
the arithmetic is exact for the decimal the user wrote (0.1 is 1/10, not a binary approximation).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

from pretrain.config import PretrainConfig

log = logging.getLogger(__name__)


def _images(epochs: float, samples: int, global_batch: int) -> Fraction:
    """epochs x samples / global_batch, exactly, in steps."""
    return Fraction(repr(epochs)) * samples / global_batch


def resolve_run_length(cfg: PretrainConfig, full_samples: int, samples: int) -> None:
    """Set `train.steps` / `schedule.warmup_steps` from `train.epochs` / `schedule.warmup_epochs` when those are
    > 0 (in place; resolving again gives the same steps). `samples`: what the run reads per epoch (the subset)."""
    t, s = cfg.train, cfg.schedule
    if t.epochs > 0:
        t.steps = math.ceil(_images(t.epochs, full_samples, t.global_batch))
    if s.warmup_epochs > 0:
        s.warmup_steps = math.floor(_images(s.warmup_epochs, full_samples, t.global_batch) + Fraction(1, 2))
    log.info("run length: %d steps of %d images = %.4g epochs of the %d training samples (%.4g passes over the "
             "%d read); warmup %d steps", t.steps, t.global_batch, t.steps * t.global_batch / full_samples,
             full_samples, t.steps * t.global_batch / samples, samples, s.warmup_steps)
