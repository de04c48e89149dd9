"""Helpers for the model tests: moving weights off their init, and the official Flax checkpoint layout."""

import numpy as np
import torch
from torch import nn


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter away from its initial value (LayerNorm scales off 1, biases and head off 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def to_flax_layout(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A timm-named Mixer state dict rewritten with the official Flax checkpoint's keys and layouts."""
    arrays = {
        "stem/kernel": state["stem.proj.weight"].permute(2, 3, 1, 0),  # OIHW -> HWIO
        "stem/bias": state["stem.proj.bias"],
        "pre_head_layer_norm/scale": state["norm.weight"],
        "pre_head_layer_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,  # (out, in) -> (in, out)
        "head/bias": state["head.bias"],
    }
    blocks = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    for i in blocks:
        src, dst = f"blocks.{i}", f"MixerBlock_{i}"
        for norm, flax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            arrays[f"{dst}/{flax_norm}/scale"] = state[f"{src}.{norm}.weight"]
            arrays[f"{dst}/{flax_norm}/bias"] = state[f"{src}.{norm}.bias"]
        for mlp, flax_mlp in (("mlp_tokens", "token_mixing"), ("mlp_channels", "channel_mixing")):
            for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
                arrays[f"{dst}/{flax_mlp}/{dense}/kernel"] = state[f"{src}.{mlp}.{fc}.weight"].T
                arrays[f"{dst}/{flax_mlp}/{dense}/bias"] = state[f"{src}.{mlp}.{fc}.bias"]
    return {key: value.detach().cpu().numpy() for key, value in arrays.items()}
