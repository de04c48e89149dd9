"""Learning-rate schedule per optimizer step: linear warmup to the peak, then linear or cosine decay."""

from __future__ import annotations

import math

import torch

from pretrain.config import ScheduleConfig


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate for the update made at `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    end = cfg.end_lr_ratio
    if cfg.name == "linear":
        return end + (1.0 - end) * (1.0 - progress)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleConfig):
    """A LambdaLR over `lr_factor`; its state_dict restores the step on resume."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
