"""Export of a DeepSpeed engine's full fp32 weights as `.safetensors` (loadable by `load_weights` and by timm).

The parameters are the optimizer's fp32 masters (`pretrain.components.masters`), not the bf16/fp16 working copy, in
every ZeRO stage; the file's metadata says so (`weights: fp32 masters`). Should a DeepSpeed version keep a ZeRO-0
master where we do not look, the working copy is exported instead, with a warning in the log and its dtype in the
metadata (`weights: bfloat16 working copy`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pretrain.components.masters import MasterNotFound, Masters
from pretrain.models import save_weights

log = logging.getLogger(__name__)
FP32_MASTERS = "fp32 masters"


def full_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 master copy and every persistent buffer, floating ones in fp32 (batch-norm statistics
    of a bf16 engine); collective under ZeRO 1-3: call on every rank. MasterNotFound when DeepSpeed keeps a master
    where `pretrain.components.masters` does not look.

    Non-persistent buffers (e.g. ConViT's relative indices, rebuilt by the model) are left out, as in
    ``state_dict()``, so the file loads strictly into a freshly built model.
    """
    state = {name: w.detach().float().cpu().clone() for name, w in Masters(engine).named()}
    return state | _buffers(engine.module)


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    persistent = module.state_dict().keys()
    out = {}
    for name, buf in module.named_buffers():
        if name in persistent:
            buf = buf.detach().cpu()
            out[name] = (buf.float() if buf.is_floating_point() else buf).clone()
    return out


def export_weights(engine, path: Path, rank: int) -> None:
    """Write the fp32 masters to `path` from rank 0 (atomically), what was written in the metadata; every rank
    must call it."""
    try:
        state, weights = full_fp32_state_dict(engine), FP32_MASTERS
    except MasterNotFound as err:
        module = engine.module
        weights = f"{next(module.parameters()).dtype} working copy".removeprefix("torch.")
        if rank == 0:
            log.warning("%s; %s exports the %s, in fp32", err, path, weights)
        state = {name: p.detach().float().cpu().clone() for name, p in module.named_parameters()}
        state |= _buffers(module)
    if rank == 0:
        save_weights(state, path, metadata={"weights": weights})
