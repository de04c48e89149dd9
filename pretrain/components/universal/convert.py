"""Writing the universal copy of a checkpoint (offline: from its files, no engine), by rank 0 while the others wait.

ZeRO 1-3 checkpoints go through DeepSpeed's own converter (`ds_to_universal`, through
`pretrain.components.ds_internals`), then normalised (`pretrain.components.universal.files`): its ZeRO-3 output has
flat tensors and no step file. A ZeRO-0 checkpoint (no ZeRO files for the converter to read) is written into the same
format by `_from_zero0`. The dynamic fp16 loss scale of either is recorded in `optimizer_state.pt`.

The copy is written into `step-N.universal.partial/`, renamed to `step-N.universal` once complete and flushed: a
kill mid-conversion leaves only the `.partial` folder, removed by the next conversion or save.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from fileio.atomic import atomic_write_text, fsync_path
from pretrain.cluster.distributed import gather
from pretrain.components.ds_internals import (
    BASE_OPTIMIZER_STATE,
    MODEL_STATES,
    OPTIM_STATES_GLOB,
    OPTIMIZER_STATE,
    WRAPPED_STATE,
    ZERO3_MODEL_STATES,
    convert_to_universal,
    saved_loss_scale,
)
from pretrain.components.universal import FAILED_SUFFIX, PARTIAL_SUFFIX, ConversionError, first_line, universal_dir
from pretrain.components.universal.files import (
    ADAM_STATES,
    WEIGHTS,
    group_names,
    link_model_states,
    write_optimizer_state,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# What a write into a full disk or over a quota raises: the OS's message, or torch's zip writer after a short write
# ("[enforce fail at inline_container.cc:672] . unexpected pos ...", "file write failed").
SHORT_WRITE = ("No space left", "Disk quota exceeded", "write failed", "inline_container")


def ensure_universal(checkpoint: Path, rank: int, module: nn.Module) -> Path:
    """The universal copy of `checkpoint`, converted by rank 0 unless it exists (collective: every rank calls it).
    A failure on rank 0 is a ConversionError on every rank.

    The other ranks wait for it on the (shared) file system, not in a collective, whose timeout
    (`DEEPSPEED_TIMEOUT`, 10 minutes by default) a large model's conversion may outlast."""
    target = universal_dir(checkpoint)
    attempt = gather(secrets.token_hex(4) if rank == 0 else None)[0]
    failed = checkpoint.with_name(f"{checkpoint.name}{FAILED_SUFFIX}-{attempt}")  # rank 0's message, for the others
    failure = None
    if rank == 0:
        if not target.is_dir():
            failure = _convert(checkpoint, target, module)
        if failure is not None:
            atomic_write_text(failed, failure)
    else:
        while not target.is_dir() and not failed.exists():
            time.sleep(POLL_SECONDS)
    failures = [f for f in gather(failure) if f is not None]
    if rank == 0:
        failed.unlink(missing_ok=True)
    if failures:
        raise ConversionError(failures[0])
    return target


def _convert(checkpoint: Path, target: Path, module: nn.Module) -> str | None:
    """`convert`, timed; what went wrong as one line, or None."""
    started = time.monotonic()
    try:
        convert(checkpoint, target, module)
    except ConversionError as err:
        return str(err)
    except Exception as err:  # DeepSpeed's converter asserts and raises what it meets; one line for the user
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or any(marker in str(err) for marker in SHORT_WRITE):
            return ("no space left on the device (or quota exceeded) for the converted copy, about the size of the "
                    "checkpoint")
        return f"the conversion failed: {type(err).__name__}: {first_line(err)}"
    log.info("converted %s to %s in %.1f s", checkpoint.name, target.name, time.monotonic() - started)
    return None


def convert(checkpoint: Path, target: Path, module: nn.Module) -> None:
    """Write the universal copy of `checkpoint` to `target` (atomically: a `.partial` folder, then a rename)."""
    partial = checkpoint.with_name(checkpoint.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)  # what a killed conversion left
    out = partial / "universal"  # ds_to_universal writes a `latest_universal` file beside its output: in partial/
    out.mkdir(parents=True)
    try:
        shapes = {name: t.shape for name, t in load_file(checkpoint / WEIGHTS).items()}
        if any(checkpoint.glob(OPTIM_STATES_GLOB)):
            _from_zero(checkpoint, out, shapes)
        else:
            _from_zero0(checkpoint, out, shapes, module)
        for folder, _, files in os.walk(out):
            for name in files:
                fsync_path(os.path.join(folder, name))
            fsync_path(folder)
        os.replace(out, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _from_zero(checkpoint: Path, out: Path, shapes: Mapping[str, torch.Size]) -> None:
    """A ZeRO 1-3 checkpoint through DeepSpeed's own converter, then normalised (see the module's docstring)."""
    _check_adam_states(checkpoint)
    (out / "conversion.log").write_text(convert_to_universal(checkpoint, out))
    zero = out / "zero"
    optim = torch.load(zero / OPTIMIZER_STATE, map_location="cpu", weights_only=False)
    base = optim.get(WRAPPED_STATE)  # ZeRO-3's: the step of the base optimizer is only there
    step = base["state"][0]["step"] if isinstance(base, Mapping) and base.get("state") else None
    for name, shape in shapes.items():
        folder = zero / name
        if not folder.is_dir():
            continue
        for key in ("fp32", *ADAM_STATES):
            path = folder / f"{key}.pt"
            if not path.is_file():
                continue
            value = torch.load(path, map_location="cpu", weights_only=False)
            tensor = value["param"] if isinstance(value, Mapping) else value
            if not isinstance(value, Mapping) or tensor.shape != shape:
                torch.save({"param": tensor.reshape(shape).float()}, path)  # ZeRO-3's: flat, bare tensors
        if not (folder / "step.pt").is_file() and (folder / "exp_avg.pt").is_file():
            if step is None:
                raise ConversionError(f"DeepSpeed's converter wrote no optimizer step for {name}")
            torch.save(step, folder / "step.pt")
    model_states = sorted(out.glob("*model_states.pt"))
    rank0 = out / MODEL_STATES if (out / MODEL_STATES).is_file() else out / ZERO3_MODEL_STATES
    states = torch.load(rank0, map_location="cpu", weights_only=False)
    if step is None:
        step = torch.load(next(zero.glob("*/step.pt")), map_location="cpu", weights_only=False)
    write_optimizer_state(zero, optim, step, states["ds_version"], saved_loss_scale(optim))
    for path in model_states:
        if path != rank0:
            path.unlink()  # ZeRO-3 ranks' copies of the same client state; the loaders read rank 0's
    link_model_states(out, rank0)


def _check_adam_states(checkpoint: Path) -> None:
    """DeepSpeed's universal format carries Adam's moments only (its converter and ZeRO-3 loader name them)."""
    path = sorted(checkpoint.glob(OPTIM_STATES_GLOB))[0]
    sd = torch.load(path, map_location="cpu", weights_only=False)[WRAPPED_STATE]
    base = sd.get(BASE_OPTIMIZER_STATE) or sd.get(WRAPPED_STATE) or {}
    _check_state_keys(base.get("state", {}))


def _check_state_keys(state: Mapping[Any, Mapping[str, Any]]) -> None:
    keys = sorted({k for entry in state.values() for k in entry} - {"step", *ADAM_STATES})
    if keys:
        raise ConversionError(f"its optimizer state holds {', '.join(keys)}; DeepSpeed's universal checkpoint carries "
                              "Adam's exp_avg/exp_avg_sq only (optim.name adamw, without amsgrad)")


def _from_zero0(checkpoint: Path, out: Path, shapes: Mapping[str, torch.Size], module: nn.Module) -> None:
    """A ZeRO-0 checkpoint: its torch optimizer state (bare, or inside DeepSpeed's bf16/fp16 wrapper with the fp32
    masters) split per parameter, in the groups `pretrain.components.optim.param_groups` makes of this model."""
    states = torch.load(checkpoint / MODEL_STATES, map_location="cpu", weights_only=False)
    opt = states.get("optimizer")
    if not isinstance(opt, Mapping):
        raise ConversionError("it holds no optimizer state")
    groups = group_names(module, shapes)
    base = opt.get(WRAPPED_STATE, opt)
    _check_state_keys(base["state"])
    saved_groups = base["param_groups"]
    if len(saved_groups) != len(groups):
        raise ConversionError(f"it has {len(saved_groups)} parameter groups, this code makes {len(groups)} "
                              "(pretrain/components/optim.py)")
    zero = out / "zero"
    weights = load_file(checkpoint / WEIGHTS)
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    steps = []
    if "fp32_groups_flat" in opt:  # DeepSpeed's fused FP16_Optimizer: one flat fp32 master and state per group
        for g, names in enumerate(groups):
            sizes = [shapes[n].numel() for n in names]
            flat = {"fp32": opt["fp32_groups_flat"][g], **{k: base["state"][g][k] for k in ADAM_STATES}}
            if flat["fp32"].numel() != sum(sizes):
                raise ConversionError(f"its parameter group {g} does not match this model's "
                                      "(pretrain/components/optim.py)")
            parts = {k: torch.split(v.flatten(), sizes) for k, v in flat.items()}
            for j, n in enumerate(names):
                per_param[n] = {k: parts[k][j].reshape(shapes[n]) for k in parts}
            steps.append(base["state"][g]["step"])
    else:  # a bare torch optimizer (fp32), or the unfused wrapper holding one fp32 master per parameter
        for g, (names, saved) in enumerate(zip(groups, saved_groups, strict=True)):
            if len(saved["params"]) != len(names):
                raise ConversionError(f"its parameter group {g} has {len(saved['params'])} parameters, this model's "
                                      f"has {len(names)} (pretrain/components/optim.py)")
            for j, (n, index) in enumerate(zip(names, saved["params"], strict=True)):
                fp32 = opt["fp32_groups"][g][j] if "fp32_groups" in opt else weights[n]
                entry = base["state"].get(index, {})
                per_param[n] = {"fp32": fp32.float(), **{k: entry.get(k, torch.zeros_like(fp32, dtype=torch.float32))
                                                          for k in ADAM_STATES}}
                if "step" in entry:
                    steps.append(entry["step"])
    if not steps:
        raise ConversionError("its optimizer has taken no step")
    step = max(steps, key=float)
    for name, tensors in per_param.items():
        (zero / name).mkdir(parents=True)
        for key, tensor in tensors.items():
            if tensor.shape != shapes[name]:
                raise ConversionError(f"its optimizer state of {name} has shape {tuple(tensor.shape)}, the weights "
                                      f"{tuple(shapes[name])}")
            torch.save({"param": tensor.detach().float().clone()}, zero / name / f"{key}.pt")
        torch.save(step, zero / name / "step.pt")
    optim = {"param_groups": saved_groups}
    if "clip_grad" in opt:
        optim["clip_grad"] = opt["clip_grad"]
    write_optimizer_state(zero, optim, step, states["ds_version"], saved_loss_scale(opt))
    states["optimizer"] = None  # all of it is in zero/ now
    torch.save(states, out / MODEL_STATES)
    link_model_states(out, out / MODEL_STATES)


