"""A training run as an assembly of components, each owning its state and its timing, and the loop over them.

Components: the train data (its position), the engine (model, optimizer, schedule), the RNG states, the train
state (step and counters), an optional EMA, the evaluators, the monitor and the checkpointer (over all of those).
A stage (pretraining, fine-tuning) differs only in how it builds the model and which evaluators it has by default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from pretrain.cluster.distributed import (
    PEER_LOST_EXIT_CODE,
    DistEnv,
    detect_env,
    init_distributed,
    is_peer_lost,
    shutdown_distributed,
)
from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionFlag, any_rank_requested, watched
from pretrain.components.checkpoint import FINAL, FINAL_EMA, Checkpointer
from pretrain.components.ema import EMA
from pretrain.components.engine import Engine, StepResult
from pretrain.components.export import export_weights
from pretrain.components.masters import Masters
from pretrain.components.rng_state import RNGStates
from pretrain.components.run_dir import METRICS, claim
from pretrain.components.run_length import resolve_run_length, resolved_config
from pretrain.components.train_data import TrainData, skipped_samples
from pretrain.components.train_state import TrainState
from pretrain.config import PretrainConfig, check_against_world, save_config, to_dict
from pretrain.config.preflight import evals_key, preflight
from pretrain.config.schema import EvalSpec
from pretrain.config.startup import check_warmup, check_workers
from pretrain.data import MixupPerStep, check_head_classes, device_preprocess
from pretrain.evaluators.build import build_evaluators
from pretrain.evaluators.runner import Evaluations
from pretrain.models import create_model, is_mixer, mixer_flops_per_image, save_weights
from pretrain.telemetry.console import describe_env, quiet_deepspeed_logger, start_up_prints
from pretrain.telemetry.convit_stats import convit_scalars, gpsa_layers
from pretrain.telemetry.memory import memory_stats
from pretrain.telemetry.mfu import forward_flops_per_image, mfu, peak_flops
from pretrain.telemetry.monitor import Monitor
from pretrain.telemetry.throughput import StepTimer
from pretrain.telemetry.weight_images import legible, token_mixing_image

log = logging.getLogger(__name__)

PROBE_IMAGES = 8  # images of a step's batch on which a ConViT's gating and nonlocality are measured


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps in a row); its last good checkpoint is intact."""


@dataclass
class TrainResult:
    """What a finished (or preempted) run reports back to its launcher."""

    step: int
    preempted: bool = False
    bad_steps: int = 0
    exit_code: int = 0


@dataclass(frozen=True)
class Stage:
    """What makes a stage: its model (built and loaded from the config), its default evaluators (and the config
    keys that set their fields, for the messages: `val.data` -> `data.val`), whether its data must have exactly
    the head's classes, and its own checks before the process group starts (`check`)."""

    build_model: Callable[[PretrainConfig], nn.Module]
    default_evals: Callable[[PretrainConfig], Mapping[str, EvalSpec]] = lambda cfg: {}
    exact_classes: bool = False
    eval_keys: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[PretrainConfig], None] = lambda cfg: None


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The configured network; the same on every rank (seeded from `train.seed` before construction)."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    model = create_model(m.name, **m.overrides())
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


PRETRAIN = Stage(build_model)


def model_flops_per_image(model: nn.Module, img_size: int) -> int:
    """Forward FLOPs of one image: a Mixer's from its shapes, any other model's counted on one forward pass
    (call before DeepSpeed wraps the model; its state and the random streams are left as they were)."""
    return mixer_flops_per_image(model) if is_mixer(model) else forward_flops_per_image(model, img_size)


def layout_meta(cfg: PretrainConfig, env: DistEnv) -> dict[str, Any]:
    """What must match between a checkpoint and the run resuming it (and the ZeRO stage, recorded)."""
    m, a = cfg.model, cfg.augment
    permute = [a.permute, a.permute_seed, cfg.permute_patch_size()] if a.permute else None
    return {"model": m.name, "img_size": m.img_size, "num_classes": m.num_classes, "patch_size": m.patch_size or None,
            "permute": permute, "world_size": env.world_size if cfg.train.zero_stage > 0 else None,
            "global_batch": cfg.train.global_batch, "micro_batch": cfg.train.micro_batch,
            "zero_stage": cfg.train.zero_stage}


class Run:
    """One run of a stage in `run_dir`: its components, built from their config sections."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, env: DistEnv, stage: Stage = PRETRAIN) -> None:
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self.accum = check_against_world(cfg, env.world_size)
        self._phase(f"opening the training data {cfg.data.train}")
        self.data = TrainData(cfg, env, run_dir, self.accum)
        check_workers(self.data.manifest, cfg, env.world_size)
        self.length = resolve_run_length(cfg, self.data.full_samples, self.data.manifest.num_samples)
        if env.rank == 0:
            check_warmup(self.length, cfg)
        check_head_classes(self.data.manifest, cfg.data.train, cfg.model.num_classes, stage.exact_classes)
        specs = {**stage.default_evals(cfg), **cfg.evals}
        evaluators = build_evaluators(specs, cfg, env, stage.exact_classes)  # bad eval data fails before training
        self._phase(f"building {cfg.model.name} at {cfg.model.img_size} px")
        model = stage.build_model(cfg)
        self.flops_per_image = model_flops_per_image(model, cfg.model.img_size)
        self.draws_weights = is_mixer(model)
        if cfg.logging.image_every_steps and not self.draws_weights:
            log.info("logging.image_every_steps: weight pictures are drawn for MLP-Mixer models only; none for %s",
                     cfg.model.name)
        if cfg.model.compile:
            model.compile()  # in place: parameter names, checkpoints and exports stay those of the model
        self.rng = RNGStates(cfg.train.seed, env.rank)  # dropout / drop-path differ per rank
        self._phase("building the DeepSpeed engine")
        self.engine = Engine(cfg, env, model, self.length)
        self.state = TrainState()
        self.ema = EMA(self.engine.module, cfg.ema.decay, Masters(self.engine.ds)) if cfg.ema.decay else None
        self.monitor = Monitor(run_dir, env.rank, total_steps=self.length.steps, every_steps=cfg.logging.every_steps)
        self.evaluations = Evaluations(evaluators, specs, self.length.steps, self.monitor, run_dir / METRICS,
                                       env.rank, self.ema)
        states = {"train_state": self.state, "data": self.data, "rng": self.rng, "evals": self.evaluations}
        if self.ema is not None:
            states["ema"] = self.ema
        self.checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep, env.rank,
                                         every_steps=cfg.checkpoint.every_steps, engine=self.engine.ds,
                                         states=states, meta=layout_meta(cfg, env))
        self.preprocess = device_preprocess(cfg, self.engine.dtype)
        self.mixup = self._mixup()
        self.has_gpsa = bool(gpsa_layers(model))
        self.probe_images: torch.Tensor | None = None
        self.checkpointed: int | None = None  # the step of the checkpoint this run wrote last or resumed from
        self.peak_flops, peak_source = peak_flops(env.device, self.engine.dtype)
        log.info("peak %.1f TFLOP/s per device (%s) for MFU", self.peak_flops / 1e12, peak_source)

    def _phase(self, what: str) -> None:
        """One line as a phase of the start-up begins (rank 0), so none is silent for long."""
        if self.env.rank == 0:
            log.info("%s", what)

    def _mixup(self) -> MixupPerStep | None:
        a = self.cfg.augment
        if a.mixup <= 0 and a.cutmix <= 0:
            return None
        return MixupPerStep(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing,
                            num_classes=self.cfg.model.num_classes, seed=self.cfg.train.seed)

    def run(self, preemption: PreemptionFlag, resume: bool) -> TrainResult:
        """Restore; run what the checkpoint's step still owes; while not done: step, then each component does what
        is due at this step; save when due. A preemption signal is acted on after a step, after a save and before
        each evaluation batch (`watched`): the run checkpoints where it is and returns PREEMPTED_EXIT_CODE."""
        steps, state = self.length.steps, self.state
        if resume:
            self._phase(f"restoring the latest checkpoint of {self.checkpointer.dir}")
        restored = resume and self.checkpointer.restore() is not None
        if restored:
            log.info("resumed from step %d", state.step)
            self.checkpointed = state.step
        self.monitor.open(first_step=state.step + 1 if restored else 0)  # drops what an earlier attempt logged later
        if self.env.rank == 0:
            resolved = resolved_config(self.cfg, self.length)
            save_config(resolved, self.run_dir / "config.yaml")
            self.monitor.log_config(to_dict(resolved), self.evaluations.metric_tags())
        try:
            with watched(preemption):
                self.evaluations.run_initial(self.engine.module, self.preprocess, state.step)
                self.evaluations.run_pending(self.engine.module, self.preprocess, state.step)  # a preemption's
                timer, window = StepTimer(), []
                while state.step < steps:
                    item, result = self.step(timer)
                    window.append(result)
                    if self.monitor.due(state.step):
                        self.log_metrics(window, timer, item)
                        window = []
                    every = self.cfg.logging.image_every_steps if self.draws_weights else 0
                    if every and state.step % every == 0:
                        self.log_weight_image()
                    done = state.step >= steps
                    if not done and any_rank_requested(preemption):
                        self.evaluations.defer(self.evaluations.due(state.step))  # run right after the resume
                        return self.preempted()
                    names = self.evaluations.due(state.step)
                    if names:
                        self.evaluations.run(names, self.engine.module, self.preprocess, state.step)
                        timer.restart()
                    if (done or self.checkpointer.due(state.step)) and state.bad_in_a_row == 0:
                        self.checkpointer.save(state.step)  # never in a non-finite streak: `latest` stays good
                        self.checkpointed = state.step
                        log.info("checkpoint at step %d written", state.step)
                        timer.restart()
                        if not done and any_rank_requested(preemption):  # arrived during the save: that's the one
                            return self.preempted()
        except Preempted:  # during an evaluation, on every rank at the same batch
            return self.preempted()
        finally:
            self.data.close()
        self.finish()
        return TrainResult(state.step, False, state.bad_steps, 0)

    def preempted(self) -> TrainResult:
        """Checkpoint this step (with the evaluations it still owes) and report PREEMPTED_EXIT_CODE."""
        self.save_on_preemption()
        return TrainResult(self.state.step, True, self.state.bad_steps, PREEMPTED_EXIT_CODE)

    def step(self, timer: StepTimer) -> tuple[dict[str, Any], StepResult]:
        """One optimizer step on the next batch, the EMA after it; stops the run after too many bad steps."""
        state = self.state
        item = next(self.data)
        timer.data_ready()
        result = self.engine.step(self.micro_batches(item))
        state.advance(self.cfg.train.global_batch, result.bad)
        if self.ema is not None:
            self.ema.update()
        timer.step_done(self.cfg.train.global_batch)
        if result.bad and self.env.rank == 0:
            log.warning("step %d: non-finite loss or gradient norm; no update (%d in a row)", state.step,
                        state.bad_in_a_row)
        if state.bad_in_a_row >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{state.bad_in_a_row} steps in a row had a non-finite loss or gradient norm (step {state.step}); "
                f"stopping. The last good checkpoint is {self.checkpointer.latest_tag() or 'none'} in "
                f"{self.checkpointer.dir}")
        return item, result

    def save_on_preemption(self) -> None:
        """A checkpoint at this step, unless it falls in a non-finite streak (`latest` then stays the last good) or
        this run has one of this step already (written just before, or resumed from: never rewritten)."""
        step, owed = self.state.step, self.evaluations.pending
        owing = "; evaluations owed at this step, run after the resume: " + ", ".join(
            f"{name} ({weights})" for name, weights in owed) if owed else ""
        if self.checkpointed == step:
            log.info("preempted: checkpoint at step %d already written%s", step, owing)
        elif self.state.bad_in_a_row == 0:
            self.checkpointer.save(step)
            log.info("preempted: checkpoint at step %d written%s", step, owing)
        else:
            log.warning("preempted at step %d during %d non-finite steps in a row: no checkpoint; the run resumes "
                        "from %s", step, self.state.bad_in_a_row, self.checkpointer.latest_tag() or "the start")

    def finish(self) -> None:
        """At `train.steps`: the final weights (and EMA) and the evaluations of the end not done yet (an evaluator
        added to the config of a finished run)."""
        export_weights(self.engine.ds, self.run_dir / FINAL, self.env.rank)
        if self.ema is not None and self.env.rank == 0:
            save_weights(self.ema.weights(), self.run_dir / FINAL_EMA,
                         metadata={"weights": f"EMA (decay {self.ema.decay}) of the fp32 masters"})
        names = self.evaluations.due(self.state.step)
        if names:
            self.evaluations.run(names, self.engine.module, self.preprocess, self.state.step)
        self.evaluations.write()

    def micro_batches(self, item: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The step's `accum` micro-batches on the device: normalised (and, if configured, permuted) images in the
        engine's dtype, hard or soft targets."""
        m, device = self.cfg.train.micro_batch, self.env.device
        out = []
        for a in range(self.accum):
            x = self.preprocess(item["image"][a * m:(a + 1) * m].to(device, non_blocking=True))
            y = item["label"][a * m:(a + 1) * m].to(device, non_blocking=True)
            if self.has_gpsa:
                self.probe_images = x[:PROBE_IMAGES]  # ConViT statistics at the next logging step, before mixup
            if self.mixup is not None:
                x, y = self.mixup(x, y, self.state.step, self.env.rank * self.accum + a)
            out.append((x, y))
        return out

    def log_weight_image(self) -> None:
        """The first blocks' token-mixing units on the patch grid (paper, Figure 5), enlarged (nearest neighbour) to
        a legible width; collective under ZeRO-3."""
        model = self.engine.module
        weights = [block.mlp_tokens.fc1.weight for block in model.blocks[:2]]
        with deepspeed.zero.GatheredParameters(weights, enabled=self.cfg.train.zero_stage == 3):
            image = legible(token_mixing_image(model))
        self.monitor.log_image("weights/token_mixing", self.state.step, image)

    def log_metrics(self, window: list[StepResult], timer: StepTimer, item: dict[str, Any]) -> None:
        """The training scalars of the steps since the last logging step (the only host syncs of the loop)."""
        finite = [r.loss for r in window if not r.bad]
        loss = mean_over_ranks(torch.stack(finite).mean().item() if finite else math.nan, self.env.device)
        lr = window[-1].lr
        throughput = timer.window()
        corrupt, short = skipped_samples(self.data, self.env.device)
        s = self.state
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "train/images_per_sec": throughput.images_per_sec,
            "train/mfu": mfu(self.flops_per_image, throughput.images_per_sec, self.env.world_size, self.peak_flops),
            "train/data_wait_frac": throughput.data_wait_frac,
            "train/skipped_samples": float(corrupt),
            "train/short_shards": float(short),
            "train/bad_steps": float(s.bad_steps),
            "train/samples_seen": float(s.samples_seen),
            "train/epoch": s.samples_seen / self.data.full_samples,
        }
        grad_norm = self.engine.grad_norm()
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        if self.has_gpsa:  # a forward on every rank at once: collective under ZeRO-3
            scalars.update(convit_scalars(self.engine.module, self.probe_images))
        scalars.update(memory_stats(self.env.device))
        self.monitor.log_scalars(s.step, scalars)
        self.monitor.progress(s.step, loss, lr, throughput)


def mean_over_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def train(cfg: PretrainConfig, run_dir: Path, resume: bool, stage: Stage = PRETRAIN,
          preemption: PreemptionFlag | None = None, overwrite: bool = False) -> TrainResult:
    """Run (or resume) the configured stage in `run_dir`. `preemption`: the flag the entry point set up first thing
    (made here otherwise). A run dir that holds a run is resumed (`resume`), moved aside (`overwrite`) or refused
    (`pretrain.components.run_dir`)."""
    env = detect_env()
    claim(run_dir, resume=resume, overwrite=overwrite, rank=env.rank)  # every rank, before any rank writes
    check_before_start(cfg, stage, env)  # a mistake is one line in seconds, before the process group starts
    quiet_deepspeed_logger(cfg.logging.verbose)
    if env.rank == 0:
        log.info("%s", describe_env(env, cfg))
    flag = preemption or PreemptionFlag()
    try:
        with start_up_prints(cfg.logging.verbose):
            init_distributed(env, cfg.train.collective_timeout_s)
            run = Run(cfg, run_dir, env, stage)
        try:
            result = run.run(flag, resume)
        except RuntimeError as err:
            if not is_peer_lost(err):
                raise
            return peer_lost(err, env, run)  # no shutdown: its barrier would wait for the lost rank
        finally:
            run.monitor.close()
    finally:
        if preemption is None:
            flag.close()
    shutdown_distributed()
    return result


def peer_lost(err: RuntimeError, env: DistEnv, run: Run) -> TrainResult:
    """One line saying this rank lost another one, and the status launch/slurm/run.sh requeues."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    latest = run.checkpointer.latest_tag() or "the start (no checkpoint yet)"
    log.error("[rank %d] lost contact with another rank at step %d (it died, its node was lost, or it hung longer "
              "than train.collective_timeout_s=%g): %s; exiting with %d, the job resumes from %s", env.rank,
              run.state.step, run.cfg.train.collective_timeout_s, first, PEER_LOST_EXIT_CODE, latest)
    return TrainResult(run.state.step, False, run.state.bad_steps, PEER_LOST_EXIT_CODE)


def check_before_start(cfg: PretrainConfig, stage: Stage, env: DistEnv) -> None:
    """The checks that need no process group (`pretrain.config.preflight`), then the stage's own."""
    specs = {**stage.default_evals(cfg), **cfg.evals}
    preflight(cfg, specs, env.world_size, stage.exact_classes, evals_key(cfg, stage.eval_keys), rank=env.rank)
    stage.check(cfg)
