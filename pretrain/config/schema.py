"""Typed configuration of a pretraining run: one dataclass per component, each validating its own values.

A YAML file maps onto `PretrainConfig` section by section (see `pretrain.config.loader`). Values that can only be
checked against the running job (world size, the data's class count) are checked by `check_against_world`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pretrain.config.deepspeed import check_raw_deepspeed
from pretrain.config.errors import ConfigError

LOSSES = ("softmax_xent", "sigmoid_xent")
EVAL_TYPES = ("classification", "fewshot")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key`, `value` and what is allowed unless `ok`."""
    if not ok:
        raise ConfigError(f"`{key}`: {value!r} is not allowed; expected {allowed}")


@dataclass
class ModelConfig:
    """Which network to build (`pretrain.models.create_model`: a Mixer variant or any timm model) and its overrides.

    `patch_size` 0 keeps the model's own; `init` and `gelu` are Mixer-only and must stay at their defaults otherwise.
    """

    name: str = "mixer_demo"
    img_size: int = 224
    num_classes: int = 1000
    patch_size: int = 0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    init: str = "flax"
    gelu: str = "exact"
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model's forward in place, before DeepSpeed wraps it

    def validate(self, prefix: str) -> None:
        require(self.img_size > 0, f"{prefix}.img_size", self.img_size, "a positive integer")
        require(self.num_classes > 0, f"{prefix}.num_classes", self.num_classes, "a positive integer")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{prefix}.{name}", value, "a number in [0, 1)")
        require(self.init in ("flax", "timm"), f"{prefix}.init", self.init, "'flax' or 'timm'")
        require(self.gelu in ("exact", "tanh"), f"{prefix}.gelu", self.gelu, "'exact' or 'tanh'")
        require(self.patch_size >= 0, f"{prefix}.patch_size", self.patch_size,
                "an integer >= 0 (0: the model's own)")
        from pretrain.models import model_problem  # imports torch and timm: only once the plain values are fine

        problem = model_problem(self.name, **self.overrides())
        if problem is not None:
            raise ConfigError(f"`{prefix}.{problem[0]}`: {problem[1]}")

    def overrides(self) -> dict[str, Any]:
        """The keyword arguments of `create_model` for this section (patch_size only when set)."""
        kwargs = dict(img_size=self.img_size, num_classes=self.num_classes, drop_rate=self.drop_rate,
                      drop_path_rate=self.drop_path_rate, init=self.init, gelu=self.gelu)
        return {**kwargs, "patch_size": self.patch_size} if self.patch_size else kwargs


@dataclass
class DataConfig:
    """Where the shards are (a folder with manifest.json, or the manifest itself) and how they are streamed."""

    train: str = ""
    val: str = ""
    workers: int = 2
    shuffle_buffer: int = 2000
    prefetch: int = 2
    subset_fraction: float = 1.0  # train on this fraction of each class of `train` (pretrain/data/subset.py)
    subset_seed: int = 0
    jpeg_decoder: str = "auto"  # auto | turbo (libjpeg-turbo via simplejpeg) | pil (pretrain/data/jpeg_turbo.py)
    decode: str = "cpu"  # cpu | device: workers draw the parameters, the main process decodes + augments (device_*.py)

    def validate(self, prefix: str) -> None:
        from pretrain.data.jpeg_turbo import DECODERS, available

        require(bool(self.train), f"{prefix}.train", self.train, "the path of a shard folder made by data_prep")
        require(self.workers >= 0, f"{prefix}.workers", self.workers, "an integer >= 0")
        require(self.shuffle_buffer >= 1, f"{prefix}.shuffle_buffer", self.shuffle_buffer, "an integer >= 1")
        require(self.prefetch >= 1, f"{prefix}.prefetch", self.prefetch, "an integer >= 1")
        require(0.0 < self.subset_fraction <= 1.0, f"{prefix}.subset_fraction", self.subset_fraction,
                "a fraction in (0, 1] (1 trains on every sample)")
        require(self.subset_seed >= 0, f"{prefix}.subset_seed", self.subset_seed, "an integer >= 0")
        require(self.decode in ("cpu", "device"), f"{prefix}.decode", self.decode,
                "cpu | device (device: decode and augment the training batch on the accelerator)")
        require(self.jpeg_decoder in DECODERS, f"{prefix}.jpeg_decoder", self.jpeg_decoder, " | ".join(DECODERS))
        require(self.jpeg_decoder != "turbo" or available(), f"{prefix}.jpeg_decoder", self.jpeg_decoder,
                "'auto' or 'pil': simplejpeg is not importable here (pip install simplejpeg)")


@dataclass
class AugmentConfig:
    """Training augmentation: inception crop + flip, optional RandAugment, mixup/cutmix, label smoothing.

    `randaugment` is a timm-style string ('rand-m20-n2-p1.0') whose magnitude is applied on the TF/big_vision scale
    the Mixer paper used: m20 is m20, not timm's m10; a string whose magnitude would be clipped is refused
    (`pretrain.data.randaugment`).

    `permute` ('' off, 'patches' or 'pixels') applies one fixed pixel permutation, drawn with `permute_seed`, to
    every image the model sees, in training, evaluation and few-shot (paper, section 3.4; see
    `pretrain.data.permutation`). `permute_patch_size` is the patch of 'patches' mode (0: the model's own).
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: float = 0.5
    randaugment: str = ""
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    permute: str = ""
    permute_seed: int = 0
    permute_patch_size: int = 0

    def validate(self, prefix: str) -> None:
        require(0.0 < self.scale[0] <= self.scale[1] <= 1.0, f"{prefix}.scale", list(self.scale),
                 "[low, high] with 0 < low <= high <= 1")
        require(0.0 < self.ratio[0] <= self.ratio[1], f"{prefix}.ratio", list(self.ratio),
                 "[low, high] with 0 < low <= high")
        for name in ("hflip", "random_erasing"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{prefix}.{name}", value, "a probability in [0, 1]")
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            require(value >= 0.0, f"{prefix}.{name}", value, "an alpha >= 0 (0 disables it)")
        require(0.0 <= self.label_smoothing < 1.0, f"{prefix}.label_smoothing", self.label_smoothing,
                 "a number in [0, 1)")
        require(self.randaugment == "" or self.randaugment.startswith("rand-"), f"{prefix}.randaugment",
                 self.randaugment, "'' or a timm RandAugment string such as 'rand-m10-n2-p1.0'")
        if self.randaugment:
            from pretrain.data.randaugment import randaugment_problem  # imports timm: only once the rest is fine

            problem = randaugment_problem(self.randaugment)
            if problem is not None:
                raise ConfigError(f"`{prefix}.randaugment`: {problem}")
        require(all(s > 0 for s in self.std), f"{prefix}.std", list(self.std), "three positive numbers")
        require(self.permute in ("", "patches", "pixels"), f"{prefix}.permute", self.permute,
                "'' (off), 'patches' or 'pixels'")
        require(self.permute_seed >= 0, f"{prefix}.permute_seed", self.permute_seed, "an integer >= 0")
        require(self.permute_patch_size >= 0, f"{prefix}.permute_patch_size", self.permute_patch_size,
                "an integer >= 0 (0: the model's patch size)")


@dataclass
class OptimConfig:
    """Optimizer (a torch optimizer handed to DeepSpeed, so nothing is compiled at start-up)."""

    name: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def validate(self, prefix: str) -> None:
        require(self.name in ("adamw", "sgd"), f"{prefix}.name", self.name, "'adamw' or 'sgd'")
        require(self.lr > 0, f"{prefix}.lr", self.lr, "a positive number")
        require(all(0.0 <= b < 1.0 for b in self.betas), f"{prefix}.betas", list(self.betas),
                 "two numbers in [0, 1)")
        require(self.eps > 0, f"{prefix}.eps", self.eps, "a positive number")
        require(0.0 <= self.momentum < 1.0, f"{prefix}.momentum", self.momentum, "a number in [0, 1)")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "a number >= 0")
        require(self.grad_clip >= 0, f"{prefix}.grad_clip", self.grad_clip, "a number >= 0 (0 disables it)")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per optimizer step: linear warmup, then linear or cosine decay (or constant)."""

    name: str = "linear"
    warmup_steps: int = 10000
    warmup_epochs: float = 0.0  # > 0: sets warmup_steps from the full training set (pretrain/components/run_length.py)
    end_lr_ratio: float = 0.0

    def validate(self, prefix: str) -> None:
        require(self.name in ("linear", "cosine", "constant"), f"{prefix}.name", self.name,
                 "'linear', 'cosine' or 'constant'")
        require(self.warmup_steps >= 0, f"{prefix}.warmup_steps", self.warmup_steps, "an integer >= 0")
        require(0 <= self.warmup_epochs < math.inf, f"{prefix}.warmup_epochs", self.warmup_epochs,
                "a number >= 0 (0: schedule.warmup_steps sets the warmup)")
        require(0.0 <= self.end_lr_ratio <= 1.0, f"{prefix}.end_lr_ratio", self.end_lr_ratio,
                 "a number in [0, 1]")


@dataclass
class TrainConfig:
    """Length, batch, precision and ZeRO stage. global_batch = micro_batch x accumulation x world size."""

    steps: int = 1000
    epochs: float = 0.0  # > 0: sets steps from the full training set (pretrain/components/run_length.py)
    global_batch: int = 4096
    micro_batch: int = 64
    precision: str = "bf16"
    zero_stage: int = 1
    grad_accum_dtype: str = "fp32"
    seed: int = 0
    max_bad_steps: int = 10
    loss: str = "softmax_xent"
    # How long a rank waits in a collective (and for the rendezvous) before it gives its peers up for lost and exits
    # with PEER_LOST_EXIT_CODE, which launch/slurm/run.sh requeues; torch's own default is 10-30 minutes.
    collective_timeout_s: float = 300.0

    def validate(self, prefix: str) -> None:
        require(self.steps > 0, f"{prefix}.steps", self.steps, "a positive integer")
        require(0 <= self.epochs < math.inf, f"{prefix}.epochs", self.epochs,
                "a number >= 0 (0: train.steps sets the length)")
        require(self.micro_batch > 0, f"{prefix}.micro_batch", self.micro_batch, "a positive integer")
        require(self.global_batch > 0 and self.global_batch % self.micro_batch == 0, f"{prefix}.global_batch",
                 self.global_batch, f"a positive multiple of train.micro_batch ({self.micro_batch})")
        require(self.precision in ("bf16", "fp16", "fp32"), f"{prefix}.precision", self.precision,
                 "'bf16', 'fp16' or 'fp32'")
        require(self.zero_stage in (0, 1, 2, 3), f"{prefix}.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        require(self.grad_accum_dtype in ("fp32", "bf16", "fp16"), f"{prefix}.grad_accum_dtype",
                 self.grad_accum_dtype, "'fp32', 'bf16' or 'fp16'")
        require(self.max_bad_steps >= 1, f"{prefix}.max_bad_steps", self.max_bad_steps, "an integer >= 1")
        require(self.loss in LOSSES, f"{prefix}.loss", self.loss, " or ".join(repr(k) for k in LOSSES))
        require(0 < self.collective_timeout_s < math.inf, f"{prefix}.collective_timeout_s", self.collective_timeout_s,
                "a positive number of seconds (longer than the slowest step, evaluation or save)")
        # DeepSpeed's ZeRO-0 accumulates in the model's dtype (any other mix: NotImplementedError at start-up).
        require(self.precision == "fp32" or self.zero_stage > 0 or self.grad_accum_dtype == self.precision,
                f"{prefix}.grad_accum_dtype", self.grad_accum_dtype,
                f"{self.precision!r} with train.precision {self.precision!r} and train.zero_stage 0 (DeepSpeed's "
                f"ZeRO-0 {self.precision} path accumulates in {self.precision}), or train.zero_stage >= 1 to keep "
                f"{self.grad_accum_dtype} accumulation")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps for this world size (checked by `check_against_world`)."""
        return self.global_batch // (self.micro_batch * world_size)


@dataclass
class CheckpointConfig:
    """How often checkpoints are written and how many are kept."""

    every_steps: int = 1000
    keep: int = 3

    def validate(self, prefix: str) -> None:
        require(self.every_steps > 0, f"{prefix}.every_steps", self.every_steps, "a positive integer")
        require(self.keep >= 1, f"{prefix}.keep", self.keep, "an integer >= 1")


@dataclass
class LoggingConfig:
    """TensorBoard and progress-line cadence (rank 0 only); `verbose`: DeepSpeed's and torch's start-up output as
    they print it (pretrain/telemetry/console.py)."""

    every_steps: int = 50
    image_every_steps: int = 1000
    verbose: bool = False

    def validate(self, prefix: str) -> None:
        require(self.every_steps > 0, f"{prefix}.every_steps", self.every_steps, "a positive integer")
        require(self.image_every_steps >= 0, f"{prefix}.image_every_steps", self.image_every_steps,
                 "an integer >= 0 (0 disables the weight pictures)")


@dataclass
class EvalSpec:
    """One evaluator of `evals`, run every `every_steps` (0: at the end only) and at the end of the run.

    `type: classification` measures top-1/top-5/loss (and ImageNet-ReaL top-1 with `real_labels`) on the shards of
    `data`; `type: fewshot` fits the paper's linear few-shot probes on frozen pre-logit features of `train` and
    scores them on `val`. `weights: init` (fine-tuning) evaluates the weights the run started from, once.
    `preprocess`: 'crop' (timm: resize the shorter side to img_size / crop_pct, center crop) or 'resize' (the
    official Mixer/ViT protocol: straight to img_size x img_size).
    """

    type: str = "classification"
    data: str = ""
    train: str = ""
    val: str = ""
    every_steps: int = 0
    batch_size: int = 250
    preprocess: str = "crop"
    crop_pct: float = 0.875
    real_labels: str = ""
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    l2_reg: float = 2.0**10
    weights: str = "trained"

    def validate(self, prefix: str) -> None:
        require(self.type in EVAL_TYPES, f"{prefix}.type", self.type, " or ".join(repr(t) for t in EVAL_TYPES))
        if self.type == "classification":
            require(bool(self.data), f"{prefix}.data", self.data, "the path of a labelled shard folder")
        else:
            require(bool(self.train), f"{prefix}.train", self.train, "the shard folder the shots are drawn from")
            require(bool(self.val), f"{prefix}.val", self.val, "the shard folder the probes are scored on")
            require(bool(self.shots) and all(s > 0 for s in self.shots), f"{prefix}.shots", self.shots,
                    "a non-empty list of positive integers")
            require(bool(self.seeds), f"{prefix}.seeds", self.seeds, "a non-empty list of integers")
            require(self.l2_reg > 0, f"{prefix}.l2_reg", self.l2_reg, "a positive number")
        require(self.every_steps >= 0, f"{prefix}.every_steps", self.every_steps,
                "an integer >= 0 (0: at the end of the run only)")
        require(self.batch_size > 0, f"{prefix}.batch_size", self.batch_size, "a positive integer")
        require(self.preprocess in ("crop", "resize"), f"{prefix}.preprocess", self.preprocess,
                "'crop' (timm: center crop of crop_pct) or 'resize' (official Mixer/ViT: straight to the square)")
        require(0.0 < self.crop_pct <= 1.0, f"{prefix}.crop_pct", self.crop_pct, "a number in (0, 1]")
        require(self.weights in ("trained", "init"), f"{prefix}.weights", self.weights,
                "'trained' (the run's weights at each evaluation) or 'init' (the weights the run started from)")


@dataclass
class EMAConfig:
    """An exponential moving average of the weights (fp32, every rank), evaluated beside them; decay 0: none."""

    decay: float = 0.0

    def validate(self, prefix: str) -> None:
        require(0.0 <= self.decay < 1.0, f"{prefix}.decay", self.decay, "a number in [0, 1) (0 disables the EMA)")


@dataclass
class PretrainConfig:
    """A whole pretraining run. `deepspeed` holds raw DeepSpeed keys merged over the derived JSON."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evals: dict[str, EvalSpec] = field(default_factory=dict)
    ema: EMAConfig = field(default_factory=EMAConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def permute_patch_size(self) -> int:
        """The patch of `augment.permute: patches`: `augment.permute_patch_size`, or else `model.patch_size`, or else
        the Mixer variant's own (0 when none of these gives one)."""
        if self.augment.permute_patch_size or self.model.patch_size:
            return self.augment.permute_patch_size or self.model.patch_size
        from pretrain.models.registry import model_patch_size  # here, so loading a config does not import torch

        return model_patch_size(self.model.name) or 0

    def validate(self, prefix: str) -> None:
        """Checks across sections: EMA needs the full weights on every rank; the permutation's patches and the
        model's patches tile the image; the raw `deepspeed:` section does not contradict the typed keys."""
        require(not (self.ema.decay and self.train.zero_stage == 3), "ema.decay", self.ema.decay,
                "0 with train.zero_stage 3 (the EMA keeps the full weights on every rank; use ZeRO 0-2)")
        self._check_permute_patches()
        self._check_model_patches()
        check_raw_deepspeed(self)

    def _check_permute_patches(self) -> None:
        if self.augment.permute != "patches":
            return
        key, value, size = "augment.permute_patch_size", self.augment.permute_patch_size, self.permute_patch_size()
        require(size > 0, key, value, f"a positive patch size: model {self.model.name!r} has no patch size of its own")
        own = "" if value else f" (0 means the model's patch size, {size})"
        img = self.model.img_size
        require(img % size == 0, key, value, f"a divisor of model.img_size ({img}){own}")

    def _check_model_patches(self) -> None:
        """`model.img_size` is a multiple of the patch (`model.patch_size`, or the Mixer variant's own); a timm
        model without `model.patch_size` is left to timm."""
        m = self.model
        if m.patch_size:
            patch, whose = m.patch_size, f"model.patch_size ({m.patch_size})"
        else:
            from pretrain.models.registry import model_patch_size  # imports torch: only once needed

            patch = model_patch_size(m.name) or 0
            whose = f"the patch size of {m.name} ({patch})"
        if not patch or m.img_size % patch == 0:
            return
        below = m.img_size // patch * patch
        nearest = f"{below} or {below + patch}" if below else f"{patch}"
        require(False, "model.img_size", m.img_size, f"a multiple of {whose}; nearest: {nearest}")

