"""ConViT monitoring: each GPSA layer's gating values sigma(lambda_h) and its nonlocality (the ConViT paper's plots).

Nonlocality of a layer is D_loc = (1/L) sum_ij A_ij ||delta_ij||: the attention-weighted distance, in patches,
between query patch i and key patch j on the (square) patch grid, averaged over heads and images. The inputs of
the GPSA layers are captured during one no-grad forward in eval mode; their attention is then recomputed in
float32 from the layers' weights, and the distances come from our own grid coordinates (the model's cached
`rel_indices` may be bf16, which cannot hold the larger squared distances exactly).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from deepspeed.runtime.zero import GatheredParameters
from timm.models.convit import GPSA
from torch import nn

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


def gpsa_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(block index, GPSA module) in depth order; empty for models without GPSA layers."""
    layers = []
    for position, (name, module) in enumerate((n, m) for n, m in model.named_modules() if isinstance(m, GPSA)):
        match = _BLOCK_INDEX.search(name)
        layers.append((int(match.group(1)) if match else position, module))
    return layers


def grid_offsets(num_tokens: int, device: torch.device | None = None) -> torch.Tensor:
    """(L, L, 2) float32 offsets (column, row) from query patch i to key patch j on the square patch grid."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"GPSA input has {num_tokens} tokens, which is not a square patch grid")
    index = torch.arange(num_tokens, device=device)
    coords = torch.stack([index % side, index // side], dim=-1).to(torch.float32)  # row-major: (column, row)
    return coords[None, :, :] - coords[:, None, :]


def gpsa_attention(gpsa: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, L) float32 attention of `gpsa` on its input `x` (B, L, C): content and positional softmaxes
    mixed by sigma(gating), as GPSA computes it, without attention dropout."""
    batch, tokens, dim = x.shape
    heads = gpsa.num_heads
    x = x.float()
    qk = F.linear(x, gpsa.qk.weight.float(), None if gpsa.qk.bias is None else gpsa.qk.bias.float())
    q, k = qk.reshape(batch, tokens, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
    content = (q @ k.transpose(-2, -1) * gpsa.scale).softmax(dim=-1)
    offsets = grid_offsets(tokens, x.device)
    rel = torch.cat([offsets, offsets.square().sum(-1, keepdim=True)], dim=-1)  # (dx, dy, dx^2 + dy^2)
    bias = None if gpsa.pos_proj.bias is None else gpsa.pos_proj.bias.float()
    position = F.linear(rel, gpsa.pos_proj.weight.float(), bias).permute(2, 0, 1).softmax(dim=-1)
    gate = torch.sigmoid(gpsa.gating_param.float()).view(1, heads, 1, 1)
    attn = (1.0 - gate) * content + gate * position
    return attn / attn.sum(dim=-1, keepdim=True)


def nonlocality(attn: torch.Tensor) -> torch.Tensor:
    """(B, H) mean attention distance (1/L) sum_ij A_ij ||delta_ij|| of (B, H, L, L) attention maps, in patches."""
    tokens = attn.shape[-1]
    distance = grid_offsets(tokens, attn.device).norm(dim=-1)
    return (attn * distance).sum(dim=(-2, -1)) / tokens


def capture_gpsa_inputs(model: nn.Module, images: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """Each layer's input during one no-grad, eval-mode forward of `model`; modes and hooks are restored."""
    inputs: dict[int, torch.Tensor] = {}
    modes = {module: module.training for module in model.modules()}

    def keeper(slot: int):
        def hook(module: nn.Module, args: tuple) -> None:
            inputs[slot] = args[0].detach().to(torch.float32, copy=True)
        return hook

    handles = [layer.register_forward_pre_hook(keeper(slot)) for slot, layer in enumerate(layers)]
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    missing = [slot for slot in range(len(layers)) if slot not in inputs]
    if missing:
        raise RuntimeError(f"the forward did not run GPSA layers {missing} (of {len(layers)})")
    return [inputs[slot] for slot in range(len(layers))]


def convit_scalars(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """TensorBoard scalars `convit/gating/layer{i}[/head{h}]` and `convit/nonlocality/layer{i}[/head{h}]`.

    One no-grad forward of `model` on `images` (normalised, in the model's dtype and device); {} without a
    forward for models without GPSA layers. Collective under ZeRO-3 (the forward and the gathering of each
    GPSA's weights): call it on every rank at once.
    """
    layers = gpsa_layers(model)
    if not layers:
        return {}
    inputs = capture_gpsa_inputs(model, images, [gpsa for _, gpsa in layers])
    names: list[str] = []
    values: list[torch.Tensor] = []
    with torch.no_grad():
        for (index, gpsa), x in zip(layers, inputs, strict=True):
            params = [gpsa.qk.weight, gpsa.pos_proj.weight, gpsa.gating_param]
            params += [p for p in (gpsa.qk.bias, gpsa.pos_proj.bias) if p is not None]
            with GatheredParameters(params):
                gating = torch.sigmoid(gpsa.gating_param.float())
                distance = nonlocality(gpsa_attention(gpsa, x)).mean(dim=0)
            for kind, per_head in (("gating", gating), ("nonlocality", distance)):
                names.append(f"convit/{kind}/layer{index}")
                values.append(per_head.mean())
                names += [f"convit/{kind}/layer{index}/head{h}" for h in range(per_head.numel())]
                values += list(per_head.unbind())
    return dict(zip(names, torch.stack(values).tolist(), strict=True))
