"""The pretraining loop: a DeepSpeed engine fed by the WebDataset streams, with exact resume and monitoring.

`train(cfg, run_dir, resume)` is the whole recipe: set up the process group, model, engine, data, checkpointer and
monitor; restore `latest` when resuming; then step until `train.steps`, checkpointing every
`checkpoint.every_steps`, at the end and when Slurm asks (SIGUSR1/SIGTERM).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.checkpoint import Checkpointer, rng_state, set_rng_state
from pretrain.config import ConfigError, PretrainConfig, check_against_world, save_config
from pretrain.convit_stats import convit_scalars, gpsa_layers
from pretrain.data import (
    MixupPerStep,
    build_train_loader,
    device_preprocess,
    load_manifest,
    merge_states,
    subset_manifest,
    train_transform,
)
from pretrain.distributed import DistEnv, detect_env, gather, init_distributed, shutdown_distributed
from pretrain.ds_config import deepspeed_config
from pretrain.export import export_weights
from pretrain.memory import memory_stats
from pretrain.mfu import forward_flops_per_image, mfu, peak_flops
from pretrain.models import create_model, is_mixer, mixer_flops_per_image
from pretrain.monitor import Monitor
from pretrain.optim import build_optimizer
from pretrain.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, any_rank_requested
from pretrain.run_length import resolve_run_length
from pretrain.schedule import build_scheduler
from pretrain.throughput import StepTimer
from pretrain.weight_images import token_mixing_image

log = logging.getLogger(__name__)

# Images of the current batch on which a ConViT's gating and nonlocality are measured at each logging step.
PROBE_IMAGES = 8

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps in a row); its last good checkpoint is intact."""


@dataclass
class TrainResult:
    """What a finished (or preempted) run reports back to its launcher."""

    step: int
    losses: list[float] = field(default_factory=list)
    preempted: bool = False
    bad_steps: int = 0
    exit_code: int = 0


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The configured network; the same on every rank (seeded from `train.seed` before construction)."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    model = create_model(m.name, **m.overrides())
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def model_flops_per_image(model: nn.Module, img_size: int) -> int:
    """Forward FLOPs of one image: a Mixer's from its shapes, any other model's counted on one forward pass
    (call before DeepSpeed wraps the model; its state and the random streams are left as they were)."""
    return mixer_flops_per_image(model) if is_mixer(model) else forward_flops_per_image(model, img_size)


def layout_meta(cfg: PretrainConfig, env: DistEnv) -> dict[str, Any]:
    """What must match between a checkpoint and the run resuming it."""
    m, a = cfg.model, cfg.augment
    permute = [a.permute, a.permute_seed, cfg.permute_patch_size()] if a.permute else None
    return {"model": m.name, "img_size": m.img_size, "num_classes": m.num_classes, "patch_size": m.patch_size or None,
            "permute": permute,
            "world_size": env.world_size if cfg.train.zero_stage > 0 else None,
            "global_batch": cfg.train.global_batch, "micro_batch": cfg.train.micro_batch}


class Trainer:
    """Owns the engine, the data stream, the checkpointer and the monitor of one run."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, env: DistEnv) -> None:
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self.accum = check_against_world(cfg, env.world_size)
        self.micro = cfg.train.micro_batch
        self.manifest = load_manifest(cfg.data.train)
        full_samples = self.manifest.num_samples
        self.manifest = subset_manifest(self.manifest, cfg.data.subset_fraction, cfg.data.subset_seed,
                                        run_dir / "data", env.rank)
        resolve_run_length(cfg, full_samples, self.manifest.num_samples)  # before the schedule and monitor
        self.check_data()
        if cfg.train.precision == "fp16" and env.device.type == "cpu":
            raise ConfigError("`train.precision`: 'fp16' is not supported by DeepSpeed on a CPU; use bf16 or fp32")
        self.model = self.build_model()
        self.flops_per_image = model_flops_per_image(self.model, cfg.model.img_size)
        self.draws_weights = is_mixer(self.model)
        if cfg.logging.image_every_steps and not self.draws_weights:
            log.info("logging.image_every_steps: weight pictures are drawn for MLP-Mixer models only; none for %s",
                     cfg.model.name)
        torch.manual_seed(cfg.train.seed * 1000 + env.rank)  # dropout / drop-path differ per rank
        optimizer = build_optimizer(self.model, cfg.optim, env.device)
        scheduler = build_scheduler(optimizer, cfg.train.steps, cfg.schedule)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, env.world_size), dist_init_required=False)
        self.dtype = DTYPES[cfg.train.precision]
        self.preprocess = device_preprocess(cfg, self.dtype)
        self.has_gpsa = bool(gpsa_layers(self.model))
        self.probe_images: torch.Tensor | None = None
        self.checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, env.rank)
        self.monitor = Monitor(run_dir, env.rank, total_steps=cfg.train.steps, every_steps=cfg.logging.every_steps)
        self.mixup = self._build_mixup()
        self.peak_flops, peak_source = peak_flops(env.device, self.dtype)
        log.info("peak %.1f TFLOP/s per device (%s) for MFU", self.peak_flops / 1e12, peak_source)
        self.step = 0
        self.bad_in_a_row = 0
        self.bad_steps = 0
        self.data_state: dict[str, Any] | None = None

    def check_data(self) -> None:
        """The head must have room for every class of the data."""
        cfg = self.cfg
        if self.manifest.num_classes > cfg.model.num_classes:
            raise ConfigError(f"`model.num_classes`: {cfg.model.num_classes} is fewer than the "
                              f"{self.manifest.num_classes} classes of {cfg.data.train}")

    def build_model(self) -> nn.Module:
        """The network to train (the fine-tune stage overrides this to load weights and swap the head)."""
        return build_model(self.cfg)

    def _build_mixup(self) -> MixupPerStep | None:
        a = self.cfg.augment
        if a.mixup <= 0 and a.cutmix <= 0:
            return None
        return MixupPerStep(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing,
                            num_classes=self.cfg.model.num_classes, seed=self.cfg.train.seed)

    def resume(self) -> None:
        """Restore model, optimizer, scheduler, step, data position and RNG from `latest`, if there is one."""
        state = self.checkpointer.load(self.engine, layout_meta(self.cfg, self.env))
        if state is None:
            return
        self.step = state["step"]
        self.bad_steps = state["bad_steps"]
        self.data_state = state["data"]
        set_rng_state(state["rng"][self.env.rank])
        log.info("resumed from step %d", self.step)

    def save(self) -> None:
        client_state = {"step": self.step, "bad_steps": self.bad_steps, "data": self._merged_data_state(),
                        "rng": gather(rng_state())}
        tag = self.checkpointer.save(self.engine, self.step, layout_meta(self.cfg, self.env), client_state)
        log.info("checkpoint %s written", tag) if self.env.rank == 0 else None

    def _merged_data_state(self) -> dict[str, Any] | None:
        states = gather(self.data_state)
        return merge_states(states) if states[0] is not None else None

    def loader(self):
        c = self.cfg
        a = c.augment
        transform = train_transform(c.model.img_size, scale=a.scale, ratio=a.ratio, hflip=a.hflip,
                                    randaugment=a.randaugment, random_erasing=a.random_erasing)
        return build_train_loader(
            self.manifest, micro_batch=self.micro, accum=self.accum, rank=self.env.rank,
            world_size=self.env.world_size, workers=c.data.workers, seed=c.train.seed, transform=transform,
            shuffle_buffer=c.data.shuffle_buffer, state=self.data_state, pin_memory=self.env.device.type == "cuda",
            prefetch=c.data.prefetch)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.ndim == 2:  # soft targets from mixup/cutmix (label smoothing already folded in)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.augment.label_smoothing)

    def micro_batch(self, images: torch.Tensor, labels: torch.Tensor, virtual_rank: int):
        """Device tensors of one micro-batch: normalised (and, if configured, permuted) images in the engine's dtype,
        hard or soft targets."""
        device = self.env.device
        x = self.preprocess(images.to(device, non_blocking=True))
        y = labels.to(device, non_blocking=True)
        if self.has_gpsa:
            self.probe_images = x[:PROBE_IMAGES]  # ConViT statistics at the next logging step, before mixup
        if self.mixup is not None:
            x, y = self.mixup(x, y, self.step, virtual_rank)
        return x, y

    def train_step(self, item: dict[str, Any]) -> float:
        """One optimizer step over `accum` micro-batches; returns this rank's mean loss (nan for a bad step)."""
        images, labels = item["image"], item["label"]
        bad = False
        losses = []
        for a in range(self.accum):
            part = slice(a * self.micro, (a + 1) * self.micro)
            x, y = self.micro_batch(images[part], labels[part], self.env.rank * self.accum + a)
            loss = self.criterion(self.engine(x), y)
            if not all_ranks_finite(loss):
                bad = True
            if bad:  # zero gradient through the same parameters, so every rank's hooks fire alike
                loss = self.engine(torch.zeros_like(x)).float().sum() * 0.0
            if bad and a == self.accum - 1:
                for group in self.optimizer.param_groups:
                    group["lr"] = 0.0  # no update this step; the scheduler restores the next lr
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        self.data_state = item["state"]
        self.step += 1
        if bad:
            self.bad_steps += 1
            self.bad_in_a_row += 1
            return math.nan
        self.bad_in_a_row = 0
        return torch.stack(losses).mean().item()

    def run(self, preemption: PreemptionFlag) -> TrainResult:
        cfg, env = self.cfg, self.env
        result = TrainResult(step=self.step)
        if self.step >= cfg.train.steps:
            return result
        timer = StepTimer()
        save_config(cfg, self.run_dir / "config.yaml") if env.rank == 0 else None
        loader = self.loader()
        try:
            self._loop(loader, timer, result, preemption)
        finally:
            loader.close()
        result.step, result.bad_steps = self.step, self.bad_steps
        if self.step >= cfg.train.steps:
            export_weights(self.engine, self.run_dir / "final.safetensors", env.rank)
        return result

    def _loop(self, loader, timer: StepTimer, result: TrainResult, preemption: PreemptionFlag) -> None:
        """Steps until `train.steps`, a preemption request, or too many bad steps."""
        cfg = self.cfg
        recent: list[float] = []
        for item in loader:
            timer.data_ready()
            loss = self.train_step(item)
            timer.step_done(cfg.train.global_batch)
            result.losses.append(loss)
            recent.append(loss)
            if self.bad_in_a_row >= cfg.train.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_in_a_row} steps in a row had a non-finite loss (step {self.step}); stopping. The "
                    f"last good checkpoint is {self.checkpointer.latest_tag() or 'none'} in {self.checkpointer.dir}")
            if self.monitor.due(self.step):
                self.log_metrics(recent, timer, item)
                recent = []
            every = cfg.logging.image_every_steps if self.draws_weights else 0
            if every and self.step % every == 0:
                self.log_weight_image()
            done = self.step >= cfg.train.steps
            if any_rank_requested(preemption) and not done:
                self.save()
                result.preempted, result.exit_code = True, PREEMPTED_EXIT_CODE
                break
            if (done or self.step % cfg.checkpoint.every_steps == 0) and self.bad_in_a_row == 0:
                self.save()  # never while non-finite steps go on: `latest` stays the last good checkpoint
                timer.restart()
            if done:
                break

    def log_weight_image(self) -> None:
        """The first blocks' token-mixing units on the patch grid (paper, Figure 5); collective under ZeRO-3."""
        model = self.engine.module
        weights = [block.mlp_tokens.fc1.weight for block in model.blocks[:2]]
        with deepspeed.zero.GatheredParameters(weights, enabled=self.cfg.train.zero_stage == 3):
            image = token_mixing_image(model)
        self.monitor.log_image("weights/token_mixing", self.step, image)

    def log_metrics(self, losses: list[float], timer: StepTimer, item: dict[str, Any]) -> None:
        finite = [v for v in losses if not math.isnan(v)]
        loss = mean_over_ranks(sum(finite) / len(finite) if finite else math.nan, self.env.device)
        window = timer.window()
        lr = self.optimizer.param_groups[0]["lr"]
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "train/images_per_sec": window.images_per_sec,
            "train/mfu": mfu(self.flops_per_image, window.images_per_sec, self.env.world_size, self.peak_flops),
            "train/data_wait_frac": window.data_wait_frac,
            "train/skipped_samples": float(item["state"].get("skipped", 0)),
            "train/bad_steps": float(self.bad_steps),
        }
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        if self.probe_images is not None:  # a forward on every rank at once: collective under ZeRO-3
            scalars.update(convit_scalars(self.engine.module, self.probe_images))
        scalars.update(memory_stats(self.env.device))
        self.monitor.log_scalars(self.step, scalars)
        self.monitor.progress(self.step, loss, lr, window)


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one tiny all-reduce)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def mean_over_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def train(cfg: PretrainConfig, run_dir: Path, resume: bool) -> TrainResult:
    """Run (or resume) the configured pretraining in `run_dir`."""
    env = detect_env()
    init_distributed(env)
    trainer = Trainer(cfg, run_dir, env)
    if resume:
        trainer.resume()
    with PreemptionFlag() as preemption:
        try:
            result = trainer.run(preemption)
        finally:
            trainer.monitor.close()
    shutdown_distributed()
    return result
