"""Typed configuration of a fine-tune / evaluation run: the pretrain sections plus `init`, and `eval` / `fewshot`,
the shorthand for the evaluators of `data.val` (more evaluators go in `evals`, as in pretraining)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from pretrain.config import load_config
from pretrain.config.schema import PretrainConfig, require


@dataclass
class InitConfig:
    """Where the starting weights come from: a pretrain run dir, `.safetensors`, official `.npz` or timm `.pth`."""

    path: str = ""
    drop_head: bool = True

    def validate(self, prefix: str) -> None:
        require(bool(self.path), f"{prefix}.path", self.path,
                 "a pretrain run dir, a .safetensors export, an official .npz or a timm .pth")


@dataclass
class EvalConfig:
    """The evaluation of `data.val` (evaluator `val`): every `every_steps` and at the end; batch size,
    preprocessing ('crop': timm's center crop of `crop_pct`; 'resize': the official Mixer/ViT protocol, straight
    to the square), optional ImageNet-ReaL labels."""

    batch_size: int = 250
    preprocess: str = "crop"
    crop_pct: float = 0.875
    real_labels: str = ""
    every_steps: int = 0

    def validate(self, prefix: str) -> None:
        require(self.batch_size > 0, f"{prefix}.batch_size", self.batch_size, "a positive integer")
        require(self.preprocess in ("crop", "resize"), f"{prefix}.preprocess", self.preprocess,
                "'crop' (timm: center crop of crop_pct) or 'resize' (official Mixer/ViT: straight to the square)")
        require(0.0 < self.crop_pct <= 1.0, f"{prefix}.crop_pct", self.crop_pct, "a number in (0, 1]")
        require(self.every_steps >= 0, f"{prefix}.every_steps", self.every_steps,
                 "an integer >= 0 (0: evaluate at the end only)")


@dataclass
class FewshotConfig:
    """The paper's few-shot linear evaluation on frozen pre-logit features, shots from `data.train`, scored on
    `data.val`: of the init weights (`init`: evaluator `fewshot_init`, once, before the first update: the paper's
    metric of the pretrained representation) and of the fine-tuned ones (`trained`: evaluator `fewshot`)."""

    enabled: bool = False
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    l2_reg: float = 2.0**10
    weights: list[str] = field(default_factory=lambda: ["init", "trained"])

    def validate(self, prefix: str) -> None:
        require(all(s > 0 for s in self.shots) and bool(self.shots), f"{prefix}.shots", self.shots,
                 "a non-empty list of positive integers")
        require(bool(self.seeds), f"{prefix}.seeds", self.seeds, "a non-empty list of integers")
        require(self.l2_reg > 0, f"{prefix}.l2_reg", self.l2_reg, "a positive number")
        require(bool(self.weights) and set(self.weights) <= {"init", "trained"}, f"{prefix}.weights", self.weights,
                "a non-empty list of 'init' (the weights fine-tuning starts from) and 'trained' (the fine-tuned ones)")


@dataclass
class FinetuneConfig(PretrainConfig):
    """A fine-tune run (`launch/finetune.py`) or an evaluation (`launch/evaluate.py`)."""

    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)


def load_finetune_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> FinetuneConfig:
    """`load_config` of a fine-tune (or evaluation) config whose model, when the config does not name it, is the one
    its init checkpoint holds (`finetune.init_model`); a config naming another model is a one-line ConfigError."""
    from finetune.init_model import complete_model

    return load_config(path, FinetuneConfig, overrides, complete=complete_model)
