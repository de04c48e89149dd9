"""Resuming a checkpoint on another layout (world size, ZeRO stage, precision) through DeepSpeed's universal format.

A DeepSpeed checkpoint is cut to the layout that wrote it: ZeRO 1-3 keep each rank's flat partition of the fp32
weights and of the optimizer moments, ZeRO-0 keeps one unpartitioned torch optimizer state. A resume on another
layout goes through one world-size- and stage-free copy of the checkpoint, written once next to it
(`checkpoints/step-N.universal/`, kept with the checkpoint and pruned with it):

    zero/<parameter>/fp32.pt, exp_avg.pt, exp_avg_sq.pt   {"param": the full fp32 tensor}
    zero/<parameter>/step.pt                              Adam's step
    zero/optimizer_state.pt                               the parameter groups' hyperparameters and the step
    mp_rank_00_model_states.pt (= zero_pp_rank_0_...)      the LR schedule, the step counters, our client state

That is DeepSpeed's universal checkpoint (`deepspeed.checkpoint.ds_to_universal` writes it from a ZeRO 1-3
checkpoint), normalised so that the loaders of every ZeRO stage read it: ds_to_universal's ZeRO-3 output has flat
tensors and no step file, the ZeRO 1/2 loaders read `param_groups`/`ds_version` and the ZeRO-3 loader reads
`optimizer_state_dict`, and the two look for differently named model-state files. A ZeRO-0 checkpoint (no ZeRO
files for ds_to_universal to read) is written into the same format by `_from_zero0`.

Loading: ZeRO 1-3 through DeepSpeed (`checkpoint.load_universal` in the engine's config, set for the load, the only
time DeepSpeed reads it); ZeRO-0, which DeepSpeed's universal loading does not cover (no ZeRO optimizer to load
into), by `load_into_zero0`: the weights, the fp32 masters and the moments through the engine's own `state_dict`
format.
Both then repair what DeepSpeed's loaders get wrong or leave out (`repair`): the parameter groups' hyperparameters
(its ZeRO-3 loader gives every group those of the first: the no-decay group would get weight decay), one Adam
step tensor per state (its ZeRO-3 loader shares one between the sub-groups: the step then advances twice per
update with two groups), and the persistent buffers (not in the universal format; taken from the checkpoint's
fp32 `model.safetensors`).

The conversion is done by rank 0 while the others wait, into `step-N.universal.partial/`, renamed to
`step-N.universal` once complete and flushed: a kill mid-conversion leaves only the `.partial` folder, removed
by the next conversion or save.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
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

from data_prep.atomic import atomic_write_text, fsync_path
from pretrain.distributed import gather

log = logging.getLogger(__name__)

UNIVERSAL_SUFFIX = ".universal"
PARTIAL_SUFFIX = ".universal.partial"
FAILED_SUFFIX = ".universal.failed"
POLL_SECONDS = 1.0
MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIMIZER_STATE = "optimizer_state.pt"
ADAM_STATES = ("exp_avg", "exp_avg_sq")
WEIGHTS = "model.safetensors"
MASTERS = ("fp32_groups", "fp32_groups_flat")  # DeepSpeed's unfused / fused bf16-fp16 wrappers' fp32 masters
# What makes a checkpoint's engine state fit a run: the meta keys that pick DeepSpeed's checkpoint format.
LAYOUT = ("world_size", "zero_stage", "precision", "grad_accum_dtype")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class ConversionError(ValueError):
    """The checkpoint cannot be brought to this run's layout (the message says why)."""


def layout_changes(saved: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """The layout keys in which the checkpoint's meta differs from this run's. A key the checkpoint does not record
    (written before it was recorded) counts as unchanged, except the world size, which the meta leaves out
    (None) under ZeRO-0, whose checkpoints fit every world size."""
    keys = [k for k in LAYOUT if k in expect and (k in saved or k == "world_size")]
    return [k for k in keys if saved.get(k) != expect.get(k)]


def engine_layout(ds) -> dict[str, str | None]:
    """The layout keys a DeepSpeed engine decides itself: its precision and, but in fp32, its gradient accumulation
    dtype (bf16 ZeRO-1 with fp32 accumulation is DeepSpeed's BF16_Optimizer, with bf16 its ZeRO optimizer). Empty
    for what is not an engine."""
    if not hasattr(ds, "get_data_types"):
        return {}
    model, accum = (DTYPE_NAMES.get(d, str(d)) for d in ds.get_data_types())
    return {"precision": model, "grad_accum_dtype": None if model == "fp32" else accum}


def describe(meta: Mapping[str, Any]) -> str:
    """`world_size=2, zero_stage=1, precision=bf16` (the keys the meta records)."""
    return ", ".join(f"{k}={meta[k]}" for k in LAYOUT if k in meta and meta[k] is not None)


def universal_dir(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + UNIVERSAL_SUFFIX)


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
        from pretrain.checkpoint import SHORT_WRITE  # what torch.save into a full disk raises

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
        if any(checkpoint.glob("*optim_states.pt")):
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
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(checkpoint), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # checkpoints written before we recorded the info
    report = io.StringIO()
    with contextlib.redirect_stdout(report), contextlib.redirect_stderr(report):
        ds_to_universal.main(args)
    (out / "conversion.log").write_text(report.getvalue())
    zero = out / "zero"
    optim = torch.load(zero / OPTIMIZER_STATE, map_location="cpu", weights_only=False)
    base = optim.get("optimizer_state_dict")  # ZeRO-3's: the step of the base optimizer is only there
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
    _write_optimizer_state(zero, optim, step, states["ds_version"])
    for path in model_states:
        if path != rank0:
            path.unlink()  # ZeRO-3 ranks' copies of the same client state; the loaders read rank 0's
    _link_model_states(out, rank0)


def _check_adam_states(checkpoint: Path) -> None:
    """DeepSpeed's universal format carries Adam's moments only (its converter and ZeRO-3 loader name them)."""
    path = sorted(checkpoint.glob("*optim_states.pt"))[0]
    sd = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    base = sd.get("base_optimizer_state") or sd.get("optimizer_state_dict") or {}
    _check_state_keys(base.get("state", {}))


def _check_state_keys(state: Mapping[Any, Mapping[str, Any]]) -> None:
    keys = sorted({k for entry in state.values() for k in entry} - {"step", *ADAM_STATES})
    if keys:
        raise ConversionError(f"its optimizer state holds {', '.join(keys)}; DeepSpeed's universal checkpoint carries "
                              "Adam's exp_avg/exp_avg_sq only (optim.name adamw, without amsgrad)")


def _from_zero0(checkpoint: Path, out: Path, shapes: Mapping[str, torch.Size], module: nn.Module) -> None:
    """A ZeRO-0 checkpoint: its torch optimizer state (bare, or inside DeepSpeed's bf16/fp16 wrapper with the fp32
    masters) split per parameter, in the groups `pretrain.optim.param_groups` makes of this model."""
    states = torch.load(checkpoint / MODEL_STATES, map_location="cpu", weights_only=False)
    opt = states.get("optimizer")
    if not isinstance(opt, Mapping):
        raise ConversionError("it holds no optimizer state")
    groups = group_names(module, shapes)
    base = opt.get("optimizer_state_dict", opt)
    _check_state_keys(base["state"])
    saved_groups = base["param_groups"]
    if len(saved_groups) != len(groups):
        raise ConversionError(f"it has {len(saved_groups)} parameter groups, this code makes {len(groups)} "
                              "(pretrain/optim.py)")
    zero = out / "zero"
    weights = load_file(checkpoint / WEIGHTS)
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    steps = []
    if "fp32_groups_flat" in opt:  # DeepSpeed's fused FP16_Optimizer: one flat fp32 master and state per group
        for g, names in enumerate(groups):
            sizes = [shapes[n].numel() for n in names]
            flat = {"fp32": opt["fp32_groups_flat"][g], **{k: base["state"][g][k] for k in ADAM_STATES}}
            if flat["fp32"].numel() != sum(sizes):
                raise ConversionError(f"its parameter group {g} does not match this model's (pretrain/optim.py)")
            parts = {k: torch.split(v.flatten(), sizes) for k, v in flat.items()}
            for j, n in enumerate(names):
                per_param[n] = {k: parts[k][j].reshape(shapes[n]) for k in parts}
            steps.append(base["state"][g]["step"])
    else:  # a bare torch optimizer (fp32), or the unfused wrapper holding one fp32 master per parameter
        for g, (names, saved) in enumerate(zip(groups, saved_groups, strict=True)):
            if len(saved["params"]) != len(names):
                raise ConversionError(f"its parameter group {g} has {len(saved['params'])} parameters, this model's "
                                      f"has {len(names)} (pretrain/optim.py)")
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
    _write_optimizer_state(zero, optim, step, states["ds_version"])
    states["optimizer"] = None  # all of it is in zero/ now
    torch.save(states, out / MODEL_STATES)
    _link_model_states(out, out / MODEL_STATES)


def _write_optimizer_state(zero: Path, optim: Mapping[str, Any], step: Any, ds_version: str) -> None:
    """optimizer_state.pt that the ZeRO 1/2 loaders (`param_groups`, `ds_version`, `clip_grad`) and the ZeRO-3
    loader (`optimizer_state_dict`: the step and the groups) both read; no tensors of any one rank."""
    groups = [dict(g) for g in optim["param_groups"]]
    out: dict[str, Any] = {"param_groups": groups, "ds_version": optim.get("ds_version", ds_version),
                           "optimizer_state_dict": {"state": {0: {"step": step}}, "param_groups": groups}}
    for key in ("clip_grad", "loss_scaler", "dynamic_loss_scale", "overflow"):
        if key in optim:
            out[key] = optim[key]
    torch.save(out, zero / OPTIMIZER_STATE)


def _link_model_states(out: Path, source: Path) -> None:
    """The client state under both names: `mp_rank_00_...` (ZeRO 0-2 loaders) and `zero_pp_rank_0_...` (ZeRO-3)."""
    for name in (MODEL_STATES, ZERO3_MODEL_STATES):
        path = out / name
        if path != source and not path.exists():
            try:
                os.link(source, path)
            except OSError:
                shutil.copy2(source, path)


def group_names(module: nn.Module, shapes: Mapping[str, torch.Size]) -> list[list[str]]:
    """The parameter names of each optimizer group, in order: `pretrain.optim.param_groups` over the parameters at
    their full `shapes` (a ZeRO-3 module's own parameters are partitioned)."""
    from pretrain.optim import param_groups

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
    if "optimizer_state_dict" in current:  # DeepSpeed's bf16/fp16 wrapper around the torch optimizer
        current["optimizer_state_dict"] = base
        ds.optimizer.load_state_dict(current)
    else:
        ds.optimizer.load_state_dict(base)
    states = torch.load(folder / MODEL_STATES, map_location="cpu", weights_only=False)
    if ds.lr_scheduler is not None and states.get("lr_scheduler") is not None:
        ds.lr_scheduler.load_state_dict(states["lr_scheduler"])
    ds.global_steps = states["global_steps"]
    ds.global_samples = states.get("global_samples", ds.global_steps * ds.train_batch_size())
    ds.skipped_steps = states["skipped_steps"]
    return states


def _step(value: Any) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def load_with_deepspeed(ds, folder: Path) -> dict[str, Any]:
    """Load the universal copy `folder` into a ZeRO 1-3 engine, with `checkpoint.load_universal` set in its config
    for the load (DeepSpeed reads it only while loading; the engine is built alike whatever it resumes)."""
    config = ds._config
    if not hasattr(config, "load_universal_checkpoint"):
        raise ConversionError("this DeepSpeed has no checkpoint.load_universal setting")
    config.load_universal_checkpoint = True
    try:
        load_path, client_state = ds.load_checkpoint(str(folder.parent), tag=folder.name,
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    finally:
        config.load_universal_checkpoint = False
    if load_path is None or client_state is None:
        raise ConversionError(f"DeepSpeed could not load {folder}")
    return client_state


def repair(ds, folder: Path, checkpoint: Path) -> None:
    """What DeepSpeed's universal loading gets wrong or leaves out: each parameter group's saved hyperparameters
    (its ZeRO-3 loader copies the first group's to all: weight decay on the no-decay group), one step tensor per
    optimizer state (its ZeRO-3 loader gives every sub-group the same one, which torch's Adam then advances once
    per sub-group and step), and the persistent buffers (not in the format; from the checkpoint's fp32 export)."""
    saved_groups = read_optimizer_state(folder)["param_groups"]
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


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
