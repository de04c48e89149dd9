"""What happens to a uint8 batch on the device before the model sees it: normalisation and the optional fixed
permutation (`augment.permute`). Built from the config by `device_preprocess`, the one place used by training
(`Trainer.micro_batch`, before mixup), evaluation and few-shot feature extraction, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .permutation import FixedPermutation
from .transforms import normalize_on_device

if TYPE_CHECKING:
    from pretrain.config import PretrainConfig


class DevicePreprocess:
    """uint8 (N, 3, H, W) on its device -> normalised float in `dtype`, permuted when `permutation` is set.

    The permutation moves whole pixels (the same one for every channel) and normalisation is per channel, so the
    two commute exactly; the permutation runs first, on the uint8 batch (fewer bytes to move than in float).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype,
                 permutation: FixedPermutation | None = None) -> None:
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.permutation = permutation

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.permutation is not None:
            images = self.permutation(images)
        return normalize_on_device(images, self.mean, self.std, self.dtype)


def device_preprocess(cfg: PretrainConfig, dtype: torch.dtype) -> DevicePreprocess:
    """The device-side preprocessing of `cfg` (augment.mean/std, augment.permute at model.img_size)."""
    a = cfg.augment
    permutation = (FixedPermutation(a.permute, a.permute_seed, cfg.model.img_size, cfg.permute_patch_size())
                   if a.permute else None)
    return DevicePreprocess(a.mean, a.std, dtype, permutation)
