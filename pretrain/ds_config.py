"""The DeepSpeed JSON, derived from the YAML config (the one source of truth) plus its raw `deepspeed:` section."""

from __future__ import annotations

import copy
from typing import Any

from pretrain.config import PretrainConfig, check_against_world


def deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict[str, Any]:
    """Batch, accumulation, clipping, precision and ZeRO keys from `cfg`; `cfg.deepspeed` is merged over them."""
    accum = check_against_world(cfg, world_size)
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
    if train.precision != "fp32":
        # Buffers follow the parameters (DeepSpeed keeps them fp32 otherwise): torch's batch norm (ResNet) wants its
        # weight and running statistics in one dtype; the exported weights hold them in fp32 again.
        derived["data_types"] = {"grad_accum_dtype": train.grad_accum_dtype, "buffer_dtype": train.precision}
    return merge(derived, cfg.deepspeed)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of `over` win, nested mappings are merged key by key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
