"""Typed configuration of a fine-tune / evaluation run: the pretrain sections plus `init`, `eval` and `fewshot`."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Exact evaluation on `data.val`: batch size, center-crop fraction, optional ImageNet-ReaL labels."""

    batch_size: int = 250
    crop_pct: float = 0.875
    real_labels: str = ""
    every_steps: int = 0

    def validate(self, prefix: str) -> None:
        require(self.batch_size > 0, f"{prefix}.batch_size", self.batch_size, "a positive integer")
        require(0.0 < self.crop_pct <= 1.0, f"{prefix}.crop_pct", self.crop_pct, "a number in (0, 1]")
        require(self.every_steps >= 0, f"{prefix}.every_steps", self.every_steps,
                 "an integer >= 0 (0: evaluate at the end only)")


@dataclass
class FewshotConfig:
    """The paper's few-shot linear evaluation on frozen pre-logit features (train shots from `data.train`)."""

    enabled: bool = False
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    l2_reg: float = 2.0**10

    def validate(self, prefix: str) -> None:
        require(all(s > 0 for s in self.shots) and bool(self.shots), f"{prefix}.shots", self.shots,
                 "a non-empty list of positive integers")
        require(bool(self.seeds), f"{prefix}.seeds", self.seeds, "a non-empty list of integers")
        require(self.l2_reg > 0, f"{prefix}.l2_reg", self.l2_reg, "a positive number")


@dataclass
class FinetuneConfig(PretrainConfig):
    """A fine-tune run (`launch/finetune.py`) or an evaluation (`launch/evaluate.py`)."""

    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)
