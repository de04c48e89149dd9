"""Loading the universal copy into a live engine of any ZeRO stage and world size, and repairing what DeepSpeed's
loaders get wrong or leave out.

ZeRO 1-3 load through DeepSpeed (`checkpoint.load_universal` set for the load, `pretrain.components.ds_internals`);
ZeRO-0, which DeepSpeed's universal loading does not cover (no ZeRO optimizer to load into), by `load_into_zero0`: the
weights, the fp32 masters and the moments through the engine's own `state_dict` format. Both then `repair`: the
parameter groups' hyperparameters (its ZeRO-3 loader gives every group those of the first: the no-decay group
would get weight decay), one Adam step tensor per state (its ZeRO-3 loader shares one between the sub-groups: the
step then advances twice per update with two groups), the persistent buffers (not in the universal format; taken
from the checkpoint's fp32 `model.safetensors`) and the dynamic fp16 loss scale (which no loader carries between
ZeRO-0 and ZeRO 1-3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pretrain.cluster.distributed import gather
from pretrain.components.ds_internals import (
    MASTERS,
    MODEL_STATES,
    WRAPPED_STATE,
    set_loss_scale,
    set_step_counters,
    universal_loading,
)
from pretrain.components.universal import ConversionError, first_line
from pretrain.components.universal.convert import ensure_universal
from pretrain.components.universal.files import (
    ADAM_STATES,
    LOSS_SCALE,
    WEIGHTS,
    group_names,
    read_optimizer_state,
    read_param,
)


def load_into_zero0(ds, folder: Path) -> dict[str, Any]:
    """Load the universal copy `folder` into a ZeRO-0 DeepSpeed engine `ds`: weights, fp32 masters, moments, the LR
    schedule and the step counters; returns the model states (our client state is in them)."""
    module = ds.module
    shapes = {n: p.shape for n, p in module.named_parameters()}
    groups = group_names(module, shapes)
    saved_groups = read_optimizer_state(folder)["param_groups"]
    if len(saved_groups) != len(groups):
        raise ConversionError(f"its optimizer has {len(saved_groups)} parameter groups, this run's {len(groups)}")
    params = dict(module.named_parameters())
    loaded = {n: read_param(folder, n) for g in groups for n in g}
    for name, entry in loaded.items():
        missing = {"fp32", "step", *ADAM_STATES} - set(entry)
        if missing:
            raise ConversionError(f"its universal copy lacks {', '.join(sorted(missing))} of {name}")
    with torch.no_grad():
        for name, entry in loaded.items():
            params[name].copy_(entry["fp32"].reshape(shapes[name]))
    # The wrapper's state_dict hands out its own lists of fp32 masters: fill copies, never those (a master swapped
    # for a new tensor is no longer the one its torch optimizer steps).
    current = {k: [list(v) if isinstance(v, list) else v for v in value] if k in MASTERS else value
               for k, value in ds.optimizer.state_dict().items()}
    state: dict[int, dict[str, Any]] = {}
    param_groups = []
    index = 0
    for g, (names, saved) in enumerate(zip(groups, saved_groups, strict=True)):
        if "fp32_groups_flat" in current:  # one flat tensor per group
            flat = {k: torch.cat([loaded[n][k].flatten() for n in names]) for k in ("fp32", *ADAM_STATES)}
            if flat["fp32"].numel() != current["fp32_groups_flat"][g].numel():
                raise ConversionError(f"its parameter group {g} does not fit this run's")
            state[g] = {"step": _step(loaded[names[0]]["step"]), **{k: flat[k] for k in ADAM_STATES}}
            current["fp32_groups_flat"][g] = flat["fp32"]
            param_groups.append({**saved, "params": [g]})
            continue
        for n in names:
            state[index] = {"step": _step(loaded[n]["step"]), **{k: loaded[n][k].reshape(shapes[n])
                                                                 for k in ADAM_STATES}}
            index += 1
        param_groups.append({**saved, "params": list(range(index - len(names), index))})
        if "fp32_groups" in current:
            current["fp32_groups"][g] = [loaded[n]["fp32"].reshape(shapes[n]) for n in names]
    base = {"state": state, "param_groups": param_groups}
    if WRAPPED_STATE in current:  # DeepSpeed's bf16/fp16 wrapper around the torch optimizer
        current[WRAPPED_STATE] = base
        ds.optimizer.load_state_dict(current)
    else:
        ds.optimizer.load_state_dict(base)
    states = torch.load(folder / MODEL_STATES, map_location="cpu", weights_only=False)
    if ds.lr_scheduler is not None and states.get("lr_scheduler") is not None:
        ds.lr_scheduler.load_state_dict(states["lr_scheduler"])
    set_step_counters(ds, states)
    return states


def _step(value: Any) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def load_with_deepspeed(ds, folder: Path) -> dict[str, Any]:
    """Load the universal copy `folder` into a ZeRO 1-3 engine, with `checkpoint.load_universal` set in its config
    for the load (DeepSpeed reads it only while loading; the engine is built alike whatever it resumes)."""
    with universal_loading(ds):
        load_path, client_state = ds.load_checkpoint(str(folder.parent), tag=folder.name,
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None or client_state is None:
        raise ConversionError(f"DeepSpeed could not load {folder}")
    return client_state


def repair(ds, folder: Path, checkpoint: Path) -> None:
    """What DeepSpeed's universal loading gets wrong or leaves out: each parameter group's saved hyperparameters
    (its ZeRO-3 loader copies the first group's to all: weight decay on the no-decay group), one step tensor per
    optimizer state (its ZeRO-3 loader gives every sub-group the same one, which torch's Adam then advances once
    per sub-group and step), the persistent buffers (not in the format; from the checkpoint's fp32 export), and the
    dynamic fp16 loss scale (no DeepSpeed loader carries it between ZeRO-0 and ZeRO 1-3)."""
    optim = read_optimizer_state(folder)
    saved_groups = optim["param_groups"]
    for group, saved in zip(ds.optimizer.param_groups, saved_groups, strict=True):
        for key, value in saved.items():
            if key != "params":
                group[key] = value
    for state in ds.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    persistent = ds.module.state_dict().keys()
    buffers = [(n, b) for n, b in ds.module.named_buffers() if n in persistent]
    if buffers:
        weights = load_file(checkpoint / WEIGHTS)
        with torch.no_grad():
            for name, buf in buffers:
                if name in weights:
                    buf.copy_(weights[name].to(buf.dtype))
    if optim.get(LOSS_SCALE) is not None:
        set_loss_scale(ds.optimizer, optim[LOSS_SCALE])


def restore(ds, checkpoint: Path, rank: int) -> dict[str, Any]:
    """Restore `ds` (any ZeRO stage, any world size) from the universal copy of `checkpoint`, converting it first
    where there is none (collective); returns the client state. Raises ConversionError."""
    folder = ensure_universal(checkpoint, rank, ds.module)
    failure, client_state = None, None
    try:
        if ds.zero_optimization_stage() == 0:
            client_state = load_into_zero0(ds, folder)
        else:
            client_state = load_with_deepspeed(ds, folder)
        repair(ds, folder, checkpoint)
    except ConversionError as err:
        failure = str(err)
    except Exception as err:  # DeepSpeed's loaders assert; one line for the user
        failure = f"{type(err).__name__}: {first_line(err)}"
    failures = [f for f in gather(failure) if f is not None]
    if failures:
        raise ConversionError(f"loading its universal copy {folder} failed: {failures[0]}")
    return client_state
