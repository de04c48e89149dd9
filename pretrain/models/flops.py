"""Forward FLOPs of an MLP-Mixer per image, from its architecture (for MFU; a training step is 3x forward).

Counted: 2 x multiply-accumulates of every matrix product (the patch stem convolution, both layers of every
token- and channel-mixing MLP, the head). Not counted: biases, LayerNorms, GELUs, residual adds, pooling,
dropout; together they are under 1% of the total for the paper's variants (about 0.6% for B/16). This is
exactly what ``torch.utils.flop_counter.FlopCounterMode`` reports for one forward pass.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pretrain.models.mixer import MlpMixer
from pretrain.models.registry import create_model


def mixer_flops_per_image(model_or_cfg: MlpMixer | str | Mapping[str, Any]) -> int:
    """Forward FLOPs for one image of ``model_or_cfg``: a built model, a variant name, or a mapping
    ``{"name": <variant>, **overrides}`` as given to ``create_model``."""
    if isinstance(model_or_cfg, MlpMixer):
        model = model_or_cfg
    else:
        cfg = {"name": model_or_cfg} if isinstance(model_or_cfg, str) else dict(model_or_cfg)
        if "name" not in cfg:
            raise ValueError(
                f"model config needs a 'name' (one of the registry's variants), got keys {sorted(cfg)}"
            )
        with torch.device("meta"):
            model = create_model(**cfg)
    tokens, dim = model.num_tokens, model.num_features
    macs = tokens * model.stem.proj.weight.numel()
    for block in model.blocks:
        macs += dim * (block.mlp_tokens.fc1.weight.numel() + block.mlp_tokens.fc2.weight.numel())
        macs += tokens * (block.mlp_channels.fc1.weight.numel() + block.mlp_channels.fc2.weight.numel())
    if isinstance(model.head, nn.Linear):
        macs += model.head.weight.numel()
    return 2 * macs
