"""The universal copy's files, as both the converter writes them and the loaders read them:

    zero/<parameter>/fp32.pt, exp_avg.pt, exp_avg_sq.pt   {"param": the full fp32 tensor}
    zero/<parameter>/step.pt                              Adam's step
    zero/optimizer_state.pt                               the parameter groups' hyperparameters, the step, and the
                                                          dynamic fp16 loss scale (`loss_scale`) where there is one
    mp_rank_00_model_states.pt (= zero_pp_rank_0_...)      the LR schedule, the step counters, our client state

That is DeepSpeed's universal checkpoint, normalised so that the loaders of every ZeRO stage read it: the ZeRO 1/2
loaders read `param_groups`/`ds_version` of `optimizer_state.pt` and the ZeRO-3 loader `optimizer_state_dict`, and
the two look for differently named model-state files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.components.ds_internals import MODEL_STATES, OPTIMIZER_STATE, WRAPPED_STATE, ZERO3_MODEL_STATES

ADAM_STATES = ("exp_avg", "exp_avg_sq")
WEIGHTS = "model.safetensors"
LOSS_SCALE = "loss_scale"  # ours, in optimizer_state.pt: `pretrain.components.ds_internals.loss_scale_of`'s dict


def write_optimizer_state(zero: Path, optim: Mapping[str, Any], step: Any, ds_version: str,
                          loss_scale: Mapping[str, Any] | None) -> None:
    """optimizer_state.pt that the ZeRO 1/2 loaders (`param_groups`, `ds_version`, `clip_grad`) and the ZeRO-3
    loader (`optimizer_state_dict`: the step and the groups) both read; no tensors of any one rank. `loss_scale`:
    the dynamic fp16 loss scale of the source, put into the live engine by
    `pretrain.components.universal.load.repair`."""
    groups = [dict(g) for g in optim["param_groups"]]
    out: dict[str, Any] = {"param_groups": groups, "ds_version": optim.get("ds_version", ds_version),
                           WRAPPED_STATE: {"state": {0: {"step": step}}, "param_groups": groups}}
    for key in ("clip_grad", "loss_scaler", "dynamic_loss_scale", "overflow"):
        if key in optim:
            out[key] = optim[key]
    if loss_scale is not None:
        out[LOSS_SCALE] = dict(loss_scale)
    torch.save(out, zero / OPTIMIZER_STATE)


def link_model_states(out: Path, source: Path) -> None:
    """The client state under both names: `mp_rank_00_...` (ZeRO 0-2 loaders) and `zero_pp_rank_0_...` (ZeRO-3)."""
    for name in (MODEL_STATES, ZERO3_MODEL_STATES):
        path = out / name
        if path != source and not path.exists():
            try:
                os.link(source, path)
            except OSError:
                shutil.copy2(source, path)


def group_names(module: nn.Module, shapes: Mapping[str, torch.Size]) -> list[list[str]]:
    """The parameter names of each optimizer group, in order: `pretrain.components.optim.param_groups` over the
    parameters at their full `shapes` (a ZeRO-3 module's own parameters are partitioned)."""
    from pretrain.components.optim import param_groups

    class FullShapes:
        def __init__(self) -> None:
            self.params = [(n, torch.empty(shapes[n], device="meta").requires_grad_(p.requires_grad))
                           for n, p in module.named_parameters()]
            if hasattr(module, "no_weight_decay"):
                self.no_weight_decay = module.no_weight_decay

        def named_parameters(self):
            return iter(self.params)

    proxy = FullShapes()
    names = {id(t): n for n, t in proxy.params}
    return [[names[id(t)] for t in group["params"]] for group in param_groups(proxy, 0.0)]


def read_param(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """fp32, exp_avg, exp_avg_sq (full tensors) and step of one parameter of a universal copy."""
    out = {}
    for path in (folder / "zero" / name).glob("*.pt"):
        value = torch.load(path, map_location="cpu", weights_only=False)
        out[path.stem] = value["param"] if isinstance(value, Mapping) else value
    return out


def read_optimizer_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "zero" / OPTIMIZER_STATE, map_location="cpu", weights_only=False)


