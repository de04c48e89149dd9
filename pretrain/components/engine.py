"""The engine component: model, optimizer and LR schedule inside a DeepSpeed engine, one optimizer step at a time.

A step is `accum` micro-batches. A step whose gradient norm is not finite on some rank is skipped on every rank:
weights, optimizer moments and step count stay as they are and the step is counted bad, the schedule still moves
on with the step count. DeepSpeed's own optimizers (ZeRO 1-3, and its fp16/bf16 wrappers under ZeRO-0) find such
a norm themselves and skip the update and the schedule (then put back on the step count here), with no host sync
of ours. Under ZeRO-0 in fp32 the torch optimizer gets the gradients as they are: the gradient norm is checked
after the last micro-batch (one tiny all-reduce per step) and a bad step's gradients are dropped just before the
optimizer's step, which then passes over every parameter and leaves everything as it was. Its state (weights, optimizer
moments, schedule) is saved and restored by the Checkpointer through `ds`, the DeepSpeed engine.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from pretrain.cluster.distributed import DistEnv
from pretrain.components.losses import classification_loss
from pretrain.components.optim import build_optimizer
from pretrain.components.run_length import RunLength
from pretrain.components.schedule import build_scheduler
from pretrain.config import ConfigError, PretrainConfig
from pretrain.config.deepspeed import deepspeed_config

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
        self._skip_update = False
        if not self.engine_skips_non_finite:
            optimizer.register_step_pre_hook(self._drop_gradients_of_a_skipped_update)

    @property
    def engine_skips_non_finite(self) -> bool:
        """DeepSpeed's ZeRO optimizers and its fp16/bf16 wrappers under ZeRO-0 skip an update whose gradient norm is
        not finite; only ZeRO-0 in fp32 hands the gradients to the torch optimizer unchecked."""
        return self.cfg.train.zero_stage >= 1 or self.cfg.train.precision != "fp32"

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.cfg.train.loss, logits, target, self.cfg.augment.label_smoothing)

    def step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimizer step over the given (inputs, targets) micro-batches; the loss stays on the device."""
        lr = self.optimizer.param_groups[0]["lr"]  # the schedule's value for this update
        losses, bad = [], False
        for a, (x, y) in enumerate(micro_batches):
            loss = self.loss(self.ds(x), y)
            self.ds.backward(loss)
            if a == len(micro_batches) - 1 and not self.engine_skips_non_finite:
                bad = self._skip_update = not self._gradients_finite()
            self.ds.step()
            losses.append(loss.detach())
        if not self.ds.was_step_applied():
            # DeepSpeed skipped the update (a non-finite gradient norm, found alike on every rank by its optimizer)
            # and with it the schedule: a bad step, and the schedule stays on the step count.
            bad = True
            self.scheduler.step()
        return StepResult(torch.stack(losses).mean(), lr, bad)

    def _gradients_finite(self) -> bool:
        """Whether the (accumulated) gradient norm is finite on every rank."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.env.device)
        return all_ranks_finite(norm)

    def _drop_gradients_of_a_skipped_update(self, optimizer, args, kwargs) -> None:
        """The torch optimizer's step pre-hook (ZeRO-0 in fp32): a skipped update's gradients are dropped after
        DeepSpeed's clipping, so the optimizer, which passes over parameters without a gradient, leaves weights,
        moments and its step count untouched; DeepSpeed still counts the step and moves the schedule on."""
        if self._skip_update:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)


def evaluation_module(cfg: PretrainConfig, env: DistEnv, model: nn.Module) -> nn.Module:
    """`model` for evaluation alone: under ZeRO-3 (`train.zero_stage: 3`) inside a DeepSpeed engine without an
    optimizer, so its parameters are partitioned over the ranks as in training and each layer is gathered on use;
    as it is otherwise (ZeRO 0-2 keep the whole model on every rank anyway)."""
    if cfg.train.zero_stage != 3:
        return model
    ds, *_ = deepspeed.initialize(model=model, config=deepspeed_config(cfg, env.world_size), dist_init_required=False)
    params = list(ds.module.parameters())
    log.info("ZeRO-3: %d of %d parameters partitioned over %d ranks", sum(p.numel() == 0 for p in params),
             len(params), env.world_size)
    return ds.module


def all_ranks_finite(value: torch.Tensor) -> bool:
    """True when the 0-dim `value` is finite on every rank (one tiny all-reduce)."""
    flag = torch.isfinite(value.detach()).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
