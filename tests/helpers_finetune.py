"""Shared helpers for the fine-tune tests: tiny Mixers with every parameter randomised.

``make_mixer`` builds our own ``pretrain.models.MlpMixer`` (timm's parameter names and methods), the model the
fine-tune stage operates on.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.models import MlpMixer


def make_mixer(
    num_classes: int = 10,
    img_size: int | tuple[int, int] = 16,
    patch_size: int = 4,
    num_blocks: int = 2,
    embed_dim: int = 32,
    seed: int = 0,
) -> nn.Module:
    """A tiny Mixer in eval mode whose parameters (biases, norms and head included) are all random.

    The default init has ~1e-6 token-mixing biases and a zero head, which would hide bias or head mistakes.
    """
    model = MlpMixer(
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch_size,
        num_blocks=num_blocks,
        embed_dim=embed_dim,
        tokens_dim=embed_dim // 2,
        channels_dim=embed_dim * 4,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_(0.2 * noise)
    return model.eval()
