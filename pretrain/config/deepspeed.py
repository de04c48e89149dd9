"""The DeepSpeed JSON, derived from the YAML config (the one source of truth) plus its raw `deepspeed:` section.

The raw section is for keys we do not model (`zero_optimization.overlap_comm`, `fp16.loss_scale_window`, ...). A
raw key that we derive from a typed key must agree with it: the rest of the run (input dtype, EMA, checkpoint
meta, accumulation, LR schedule) follows the typed key, so a raw value that differs is a one-line ConfigError
naming both keys (`check_raw_deepspeed`), at load time and again when the JSON is built for the world size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pretrain.config.batch import check_against_world
from pretrain.config.errors import ConfigError

if TYPE_CHECKING:
    from pretrain.config.schema import PretrainConfig

# DeepSpeed key we derive -> (the typed key to set instead, what the typed side says). The derived value itself is
# read from `derived_keys`; a key absent there (data_types under fp32) is not ours and stays free.
# `gradient_accumulation_steps` is checked on its own (`_check_accumulation`): it also depends on the world size.
_TYPED: dict[str, tuple[str, Callable[[PretrainConfig], str]]] = {
    "train_batch_size": ("train.global_batch", lambda c: f"train.global_batch {c.train.global_batch}"),
    "train_micro_batch_size_per_gpu": ("train.micro_batch", lambda c: f"train.micro_batch {c.train.micro_batch}"),
    "gradient_clipping": ("optim.grad_clip", lambda c: f"optim.grad_clip {c.optim.grad_clip!r}"),
    "zero_optimization.stage": ("train.zero_stage", lambda c: f"train.zero_stage {c.train.zero_stage}"),
    "bf16.enabled": ("train.precision", lambda c: f"train.precision {c.train.precision!r}"),
    "fp16.enabled": ("train.precision", lambda c: f"train.precision {c.train.precision!r}"),
    "data_types.grad_accum_dtype": ("train.grad_accum_dtype",
                                    lambda c: f"train.grad_accum_dtype {c.train.grad_accum_dtype!r}"),
    "data_types.buffer_dtype": ("train.precision", lambda c: f"train.precision {c.train.precision!r}"),
}
ACCUMULATION = "gradient_accumulation_steps"
# Whole sections DeepSpeed silently ignores because we hand it the optimizer and the LR scheduler.
_IGNORED = {
    "optimizer": "optim.name, optim.lr, optim.betas, optim.weight_decay, ... (the optimizer is built from optim.* "
                 "and handed to DeepSpeed, which then ignores this section)",
    "scheduler": "schedule.name, schedule.warmup_steps, ... (the LR schedule is built from schedule.* and handed "
                 "to DeepSpeed, which then ignores this section)",
}


def deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict[str, Any]:
    """Batch, accumulation, clipping, precision and ZeRO keys from `cfg`; `cfg.deepspeed` is merged over them."""
    accum = check_against_world(cfg, world_size)
    check_raw_deepspeed(cfg, world_size)
    return merge(derived_keys(cfg, accum), cfg.deepspeed)


def derived_keys(cfg: PretrainConfig, accum: int | None) -> dict[str, Any]:
    """The JSON we derive from the typed keys (without `gradient_accumulation_steps` when `accum` is None)."""
    train = cfg.train
    derived: dict[str, Any] = {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch SGD/AdamW, handed over by us, are fine under ZeRO
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 2**31 - 1,  # our monitor prints progress; DeepSpeed's own line would repeat it
        "wall_clock_breakdown": False,
    }
    if accum is None:
        del derived["gradient_accumulation_steps"]
    if train.precision != "fp32":
        # Buffers follow the parameters (DeepSpeed keeps them fp32 otherwise): torch's batch norm (ResNet) wants its
        # weight and running statistics in one dtype; the exported weights hold them in fp32 again.
        derived["data_types"] = {"grad_accum_dtype": train.grad_accum_dtype, "buffer_dtype": train.precision}
    return derived


def check_raw_deepspeed(cfg: PretrainConfig, world_size: int | None = None) -> None:
    """Raise a ConfigError for a raw `deepspeed:` key that contradicts a typed key (naming both), that replaces a
    section holding one by a non-mapping, or that DeepSpeed would ignore. Without `world_size` (at load time),
    `gradient_accumulation_steps` is only checked for being possible at all; with it, against the derived one."""
    raw = cfg.deepspeed
    for section, instead in _IGNORED.items():
        if section in raw:
            raise ConfigError(f"`deepspeed.{section}`: not allowed; set {instead}")
    accum = None if world_size is None else check_against_world(cfg, world_size)
    if ACCUMULATION in raw:
        _check_accumulation(cfg, raw[ACCUMULATION], world_size, accum)
    derived = derived_keys(cfg, accum)
    for dotted, (typed_key, typed) in _TYPED.items():
        where, value = _lookup(raw, dotted)
        if where is None:
            continue
        if where != dotted:
            raise ConfigError(f"`deepspeed.{where}`: {value!r} is not allowed; expected a mapping (it holds "
                              f"{dotted}, which comes from {typed_key}: set that instead)")
        present, want = _lookup(derived, dotted)
        if present is not None and not _same(value, want):
            raise ConfigError(f"`deepspeed.{dotted}`: {value!r} contradicts {typed(cfg)} (from which the DeepSpeed "
                              f"JSON gets {want!r}); set {typed_key} instead")


def _check_accumulation(cfg: PretrainConfig, value: Any, world_size: int | None, accum: int | None) -> None:
    g, m = cfg.train.global_batch, cfg.train.micro_batch
    instead = "set train.global_batch or train.micro_batch instead (the accumulation is derived from them)"
    if accum is not None:
        if not _same(value, accum):
            raise ConfigError(f"`deepspeed.{ACCUMULATION}`: {value!r} contradicts train.global_batch / "
                              f"(train.micro_batch x world size) = {g} / ({m} x {world_size}) = {accum}; {instead}")
        return
    possible = isinstance(value, int) and not isinstance(value, bool) and value > 0 and (g // m) % value == 0
    if not possible:
        raise ConfigError(f"`deepspeed.{ACCUMULATION}`: {value!r} contradicts train.global_batch / "
                          f"(train.micro_batch x world size) = {g} / ({m} x world size), which is {value!r} for no "
                          f"world size; {instead}")


def _lookup(tree: Mapping[str, Any], dotted: str) -> tuple[str | None, Any]:
    """(where, value): `dotted` and its value when present; None when absent; the shorter dotted key and its value
    when a non-mapping stands where a section of `dotted` should be."""
    node: Any = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return ".".join(parts[:depth]), node
        if part not in node:
            return None, None
        node = node[part]
    return dotted, node


def _same(value: Any, want: Any) -> bool:
    """Equal, with booleans equal to booleans only (`enabled: 1` is not `true`) and 1 equal to 1.0."""
    if isinstance(value, bool) or isinstance(want, bool):
        return value is want
    if isinstance(value, (int, float)) and isinstance(want, (int, float)):
        return value == want
    return type(value) is type(want) and value == want


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of `over` win, nested mappings are merged key by key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
