"""The batch arithmetic against the running job's world size: global batch = micro-batch x world size x accumulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.config.errors import ConfigError

if TYPE_CHECKING:
    from pretrain.config.schema import PretrainConfig


def check_against_world(cfg: PretrainConfig, world_size: int) -> int:
    """Check the batch arithmetic for this world size; return the gradient accumulation steps."""
    per_step = cfg.train.micro_batch * world_size
    if cfg.train.global_batch % per_step:
        raise ConfigError(
            f"`train.global_batch`: {cfg.train.global_batch} is not divisible by train.micro_batch x world size "
            f"= {cfg.train.micro_batch} x {world_size} = {per_step}; choose a multiple of {per_step}")
    return cfg.train.global_batch // per_step
