"""The engine component: model, optimizer and LR schedule inside a DeepSpeed engine, one optimizer step at a time.

A step is `accum` micro-batches. Under ZeRO 1-3 (and fp16) DeepSpeed's optimizer finds a non-finite gradient norm
itself, on every rank alike, and skips the update and the schedule: the step is counted bad and the schedule put
back on the step count, with no host sync of ours. Under ZeRO-0 a non-finite loss on any rank (one tiny all-reduce
per micro-batch) makes that micro-batch contribute a zero gradient through the same parameters (a forward on zeros
times 0, so every rank's hooks fire alike) and the step applies no update (learning rate 0 for it). Its state
(weights, optimizer moments, schedule) is saved and restored by the Checkpointer through `ds`, the DeepSpeed engine.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from pretrain.config import ConfigError, PretrainConfig
from pretrain.distributed import DistEnv
from pretrain.ds_config import deepspeed_config
from pretrain.losses import classification_loss
from pretrain.optim import build_optimizer
from pretrain.run_length import RunLength
from pretrain.schedule import build_scheduler

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did: this rank's mean loss (a 0-dim tensor, not synced), the learning rate its
    update used (from the schedule, before a bad step zeroes it), and whether it was skipped as non-finite."""

    loss: torch.Tensor
    lr: float
    bad: bool


class Engine:
    """The DeepSpeed engine over `model` (built and loaded by the stage) with our optimizer and schedule."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv, model: nn.Module, length: RunLength) -> None:
        if cfg.train.precision == "fp16" and env.device.type == "cpu":
            raise ConfigError("`train.precision`: 'fp16' is not supported by DeepSpeed on a CPU; use bf16 or fp32")
        self.cfg, self.env = cfg, env
        self.dtype = DTYPES[cfg.train.precision]
        optimizer = build_optimizer(model, cfg.optim, env.device)
        schedule = dataclasses.replace(cfg.schedule, warmup_steps=length.warmup_steps)
        scheduler = build_scheduler(optimizer, length.steps, schedule)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, env.world_size),
            dist_init_required=False)

    @property
    def engine_skips_non_finite(self) -> bool:
        """DeepSpeed's ZeRO optimizers (and its fp16 loss scaler) skip an update whose gradient norm is not finite,
        so a step needs no check of its own per micro-batch (and no host sync)."""
        return self.cfg.train.zero_stage >= 1 or self.cfg.train.precision == "fp16"

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.cfg.train.loss, logits, target, self.cfg.augment.label_smoothing)

    def step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimizer step over the given (inputs, targets) micro-batches; the loss stays on the device."""
        lr = self.optimizer.param_groups[0]["lr"]  # the schedule's value for this update
        if self.engine_skips_non_finite:
            losses = [self._micro_step(x, y) for x, y in micro_batches]
            bad = False
        else:
            losses, bad = self._guarded_micro_steps(micro_batches)
        mean = torch.full((), float("nan")) if bad else torch.stack(losses).mean()
        if not self.ds.was_step_applied():
            # DeepSpeed skipped the update (a non-finite gradient norm, found alike on every rank by its optimizer)
            # and with it the schedule: a bad step, and the schedule stays on the step count.
            bad = True
            self.scheduler.step()
        return StepResult(mean, lr, bad)

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(self.ds(x), y)
        self.ds.backward(loss)
        self.ds.step()
        return loss.detach()

    def _guarded_micro_steps(self, micro_batches) -> tuple[list[torch.Tensor], bool]:
        """ZeRO-0 without a loss scaler applies non-finite gradients: each micro-batch's loss is checked on every
        rank (a host sync) and a bad one contributes a zero gradient instead; the step then applies no update."""
        bad = False
        losses = []
        for a, (x, y) in enumerate(micro_batches):
            loss = self.loss(self.ds(x), y)
            if not all_ranks_finite(loss):
                bad = True
            if bad:  # zero gradient through the same parameters, so every rank's hooks fire alike
                loss = self.ds(torch.zeros_like(x)).float().sum() * 0.0
            if bad and a == len(micro_batches) - 1:
                for group in self.optimizer.param_groups:
                    group["lr"] = 0.0  # no update this step; the scheduler restores the next lr
            self.ds.backward(loss)
            self.ds.step()
            losses.append(loss.detach())
        return losses, bad

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one tiny all-reduce)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
