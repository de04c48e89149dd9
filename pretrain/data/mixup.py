"""Batch-level mixup / cutmix for the trainer, deterministic per (seed, step, virtual rank).

Wraps timm's Mixup, which draws from NumPy's global RNG: around each call we seed that RNG from
(seed, step, virtual_rank) and restore the caller's state afterwards, so nothing leaks and the result does
not depend on which rank or accumulation step handles a micro-batch. Pair it with timm's
SoftTargetCrossEntropy on the trainer side (the targets are soft, label smoothing included).
"""

from __future__ import annotations

import numpy as np
import torch
from timm.data.mixup import Mixup

from .streams import MIXUP, mix_seed


class MixupPerStep:
    """timm Mixup ('batch' mode by default) with per-step seeding; mixes `images` in place."""

    def __init__(
        self,
        *,
        mixup_alpha: float,
        cutmix_alpha: float,
        label_smoothing: float,
        num_classes: int,
        seed: int,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
    ):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixupPerStep needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.seed = seed
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, virtual_rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a micro-batch (float images, int labels) -> (images, soft targets (N, num_classes)).

        Pass virtual_rank = rank * accum + micro-batch index: then the mix does not depend on the R/A split.
        """
        if len(images) % 2:
            raise ValueError(f"mixup needs an even micro-batch, got {len(images)}")
        saved = np.random.get_state()
        try:
            s = mix_seed(self.seed, MIXUP, step, virtual_rank)
            np.random.seed([s & 0xFFFFFFFF, s >> 32])
            return self.mixup(images, labels)
        finally:
            np.random.set_state(saved)
