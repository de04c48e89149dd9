"""Layers that carry their own initialisation, and stochastic depth.

Each layer initialises its parameters in ``reset_parameters``, which ``nn.Linear``/``nn.Conv2d`` call from
their own ``__init__``. The weights are therefore final by the time the layer's constructor returns, which is
what DeepSpeed ZeRO-3 ``zero.Init`` needs: it partitions a module's parameters right after that module's
``__init__``, so a later pass over the whole model would only see empty shards.

Initialisers:
- ``lecun_normal_``: truncated normal (cut at two standard deviations) with variance 1/fan_in, rescaled so
  that the truncated distribution keeps that variance; Flax's ``nn.initializers.lecun_normal()``, the default
  kernel initialiser of ``nn.Dense`` and ``nn.Conv``.
- ``LecunDense``: lecun-normal kernel, zero bias (Flax ``nn.Dense`` defaults, used by the official Mixer
  code).
- ``XavierDense``: xavier-uniform kernel, normal(std=1e-6) bias (timm's Mixer MLP init).
- ``ZeroDense``: zero kernel and bias (the classifier head of the official code).
- ``LecunConv2d``: lecun-normal kernel, zero bias (the patch stem in both schemes).
"""

import math

import torch
from torch import nn

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it restores the intended variance.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Fill ``weight`` (out, in, *kernel) in place from Flax's lecun-normal distribution; return it.

    Sampled by inverse CDF (uniform -> erfinv), one pass over the tensor; ``nn.init.trunc_normal_`` rejection-
    samples and is ~10x slower on large layers.
    """
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
    low, high = (math.erf(bound / math.sqrt(2.0)) for bound in (-2.0, 2.0))  # 2 * cdf(bound) - 1
    with torch.no_grad():
        weight.uniform_(low, high).erfinv_().mul_(std * math.sqrt(2.0))
        return weight.clamp_(-2.0 * std, 2.0 * std)


class LecunDense(nn.Linear):
    """Linear layer with lecun-normal weight and zero bias (Flax ``nn.Dense`` defaults)."""

    def reset_parameters(self) -> None:
        lecun_normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class XavierDense(nn.Linear):
    """Linear layer with xavier-uniform weight and normal(std=1e-6) bias (timm's Mixer MLP init)."""

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.normal_(self.bias, std=1e-6)


class ZeroDense(nn.Linear):
    """Linear layer whose weight and bias start at zero (the Mixer classifier head)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class LecunConv2d(nn.Conv2d):
    """2-D convolution with lecun-normal weight and zero bias (Flax ``nn.Conv`` defaults)."""

    def reset_parameters(self) -> None:
        lecun_normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for whole samples with probability ``drop_prob``.

    Kept samples are scaled by 1 / (1 - drop_prob) so the expected output is unchanged and evaluation is the
    identity (as timm; big_vision leaves kept samples unscaled).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"
