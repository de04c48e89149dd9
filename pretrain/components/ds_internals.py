"""Every use of DeepSpeed's private parts, in one place: what its public API does not offer and the universal
checkpoint needs (`pretrain/components/universal/`). Each is pinned by `tests/test_ds_internals.py` on a tiny real
engine, so a DeepSpeed upgrade that changes one fails there, by name, instead of corrupting a resume; `pyproject.toml`
pins the DeepSpeed versions it was checked with.

- file names of its checkpoints (`MODEL_STATES`, `ZERO3_MODEL_STATES`, `OPTIM_STATES_GLOB`; `OPTIMIZER_STATE`:
  what `ds_to_universal` writes),
- the state-dict keys of its optimizer wrappers: the fp32 masters of the bf16/fp16 ZeRO-0 wrappers (`MASTERS`), the
  torch optimizer inside them (`WRAPPED_STATE`), the ZeRO 1/2 flat partitions' (`BASE_OPTIMIZER_STATE`),
- `ds_to_universal.main`, driven with the arguments of its own parser (`convert_to_universal`),
- `engine._config.load_universal_checkpoint`, set for one load (`universal_loading`),
- the engine's step counters, written after a load it did not do (`set_step_counters`),
- the bf16/fp16 ZeRO-0 wrapper's per-parameter fp32 masters (`zero0_masters`, for the EMA and the export),
- the dynamic fp16 loss scale: the ZeRO 1-3 optimizers' `loss_scaler`, the ZeRO-0 `FP16_Optimizer`'s
  `loss_scale_config` and their state-dict forms (`loss_scale_of`, `saved_loss_scale`, `set_loss_scale`).
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES_GLOB = "*optim_states.pt"
OPTIMIZER_STATE = "optimizer_state.pt"
MASTERS = ("fp32_groups", "fp32_groups_flat")  # the unfused (bf16) / fused (fp16) ZeRO-0 wrappers' fp32 masters
WRAPPED_STATE = "optimizer_state_dict"  # the torch optimizer's state inside a wrapper's state dict
BASE_OPTIMIZER_STATE = "base_optimizer_state"  # ZeRO 1/2: the torch optimizer's state of the flat partitions
STEP_COUNTERS = ("global_steps", "global_samples", "skipped_steps")
# The dynamic loss scale, ours: what decides the next scale (the hysteresis only where both sides have one).
LOSS_SCALE_KEYS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")



def zero0_masters(optimizer) -> dict[int, Any]:
    """{id(working parameter): its fp32 master} of a bf16/fp16 ZeRO-0 wrapper (FP16_UnfusedOptimizer, also for bf16:
    `fp16_groups` beside `fp32_groups`, parameter by parameter); empty for any other optimizer."""
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, MASTERS[0], None)
    masters: dict[int, Any] = {}
    if isinstance(low, list) and isinstance(high, list):
        for lows, highs in zip(low, high, strict=True):
            if isinstance(lows, list) and isinstance(highs, list):  # per-parameter groups, not flat buffers
                masters.update({id(p): m for p, m in zip(lows, highs, strict=True)})
    return masters

def universal_checkpoint_info() -> dict[str, Any]:
    """What `ds_to_universal` wants in a checkpoint's client state (it refuses a checkpoint without it)."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def convert_to_universal(checkpoint: Path, out: Path) -> str:
    """Run `ds_to_universal` on a ZeRO 1-3 checkpoint folder into `out` with one worker, strict, injecting the
    universal info into checkpoints written before we recorded it; returns what it printed. The arguments come
    from its own parser, so a renamed or new option fails here or takes its default."""
    from deepspeed.checkpoint import ds_to_universal

    argv = ["ds_to_universal", "--input_folder", str(checkpoint), "--output_folder", str(out),
            "--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state"]
    report = io.StringIO()
    saved_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(report), contextlib.redirect_stderr(report):
            ds_to_universal.main(ds_to_universal.parse_arguments())
    finally:
        sys.argv = saved_argv
    return report.getvalue()


@contextlib.contextmanager
def universal_loading(ds) -> Iterator[None]:
    """`checkpoint.load_universal` on for the loads inside the block (DeepSpeed reads it only while loading, so
    the engine is built alike whatever it resumes)."""
    config = ds._config
    if not hasattr(config, "load_universal_checkpoint"):
        raise AttributeError("this DeepSpeed's engine config has no load_universal_checkpoint")
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = False


def set_step_counters(ds, states: Mapping[str, Any]) -> None:
    """The engine's step counters from a checkpoint's model states, as its own loader sets them."""
    ds.global_steps = states["global_steps"]
    ds.global_samples = states.get("global_samples", ds.global_steps * ds.train_batch_size())
    ds.skipped_steps = states["skipped_steps"]


def loss_scale_of(optimizer) -> dict[str, Any] | None:
    """The dynamic loss scale of a live optimizer wrapper (ZeRO 1-3: `loss_scaler`; ZeRO-0 fp16:
    `loss_scale_config`), as our plain dict; None without dynamic scaling (fp32, bf16, a static scale)."""
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is not None:
        return _plain(scaler) if getattr(scaler, "dynamic", False) else None
    config = getattr(optimizer, "loss_scale_config", None)
    if config is not None and config.dynamic_loss_scale:
        return _plain(config)
    return None


def saved_loss_scale(optim_state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dynamic loss scale in a saved optimizer state dict (ZeRO 1-3 and their `ds_to_universal` output: the
    pickled `loss_scaler`; ZeRO-0 fp16: `FP16_Optimizer.state_dict`'s keys); None without one."""
    if "loss_scaler" in optim_state:
        return _plain(optim_state["loss_scaler"]) if optim_state.get("dynamic_loss_scale") else None
    if optim_state.get("dynamic_loss_scale") and "cur_scale" in optim_state:
        return _plain(optim_state)
    return None


def set_loss_scale(optimizer, scale: Mapping[str, Any]) -> bool:
    """Put `scale` (from `loss_scale_of` / `saved_loss_scale`) into a live optimizer wrapper with dynamic scaling;
    False where it has none (its precision does not scale)."""
    target = getattr(optimizer, "loss_scaler", None)
    if target is None or not getattr(target, "dynamic", False):
        config = getattr(optimizer, "loss_scale_config", None)
        target = config if config is not None and config.dynamic_loss_scale else None
    if target is None:
        return False
    for key in LOSS_SCALE_KEYS:
        if scale.get(key) is not None and hasattr(target, key):
            setattr(target, key, scale[key])
    return True


def _plain(source) -> dict[str, Any]:
    get = source.get if isinstance(source, Mapping) else lambda k: getattr(source, k, None)
    return {key: get(key) for key in LOSS_SCALE_KEYS}
