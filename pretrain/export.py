"""Export of a DeepSpeed engine's full fp32 weights as `.safetensors` (loadable by `load_weights` and by timm)."""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param

from pretrain.models import save_weights


def full_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 master copy (collective under ZeRO-3: call on every rank)."""
    state = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)  # None where DeepSpeed keeps no separate master copy
        state[name] = (param.data if full is None else full).detach().float().cpu().clone()
    for name, buf in engine.module.named_buffers():
        state[name] = buf.detach().cpu().clone()
    return state


def export_weights(engine, path: Path, rank: int) -> None:
    """Write the fp32 weights to `path` from rank 0 (atomically); every rank must call it."""
    state = full_fp32_state_dict(engine)
    if rank == 0:
        save_weights(state, path)
