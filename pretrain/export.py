"""Export of a DeepSpeed engine's full fp32 weights as `.safetensors` (loadable by `load_weights` and by timm)."""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param

from pretrain.models import save_weights


def full_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 master copy and every persistent buffer, floating ones in fp32 (batch-norm statistics
    of a bf16 engine); collective under ZeRO-3: call on every rank.

    Non-persistent buffers (e.g. ConViT's relative indices, rebuilt by the model) are left out, as in
    ``state_dict()``, so the file loads strictly into a freshly built model.
    """
    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)  # None where DeepSpeed keeps no separate master copy
        state[name] = (param.data if full is None else full).detach().float().cpu().clone()
    persistent = module.state_dict().keys()
    for name, buf in module.named_buffers():
        if name in persistent:
            buf = buf.detach().cpu()
            state[name] = (buf.float() if buf.is_floating_point() else buf).clone()
    return state


def export_weights(engine, path: Path, rank: int) -> None:
    """Write the fp32 weights to `path` from rank 0 (atomically); every rank must call it."""
    state = full_fp32_state_dict(engine)
    if rank == 0:
        save_weights(state, path)
