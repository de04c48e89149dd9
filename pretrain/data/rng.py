"""Global RNG handling for per-sample determinism: seed Python's, NumPy's and torch's CPU generators for one
sample, and give the caller's generators back afterwards.

Augmentations from timm and torchvision draw from these global generators; seeding them per sample from
(seed, epoch, stream, position) makes a sample's augmentation independent of the process that runs it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_globals(seed: int) -> None:
    """Seed Python's `random`, NumPy's legacy global RNG and torch's CPU generator (not CUDA's)."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch.random.default_generator.manual_seed(seed)


@contextmanager
def preserved_globals() -> Iterator[None]:
    """Restore the global generators on exit, so seeding inside does not leak into the caller."""
    py, npy, pt = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.default_generator.set_state(pt)
