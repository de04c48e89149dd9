"""Fine-tuning as a stage of the run: the model starts from `init.path` (expanded to `model.img_size`, with a new
zero head), the data must have the head's classes, and `data.val` is evaluated by default (`eval`, `fewshot`).

Everything else (engine, input pipeline, checkpoints, resume, preemption, monitoring, evaluators) is the run's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from finetune.config import FinetuneConfig
from finetune.errors import FinetuneError
from finetune.head import replace_head
from finetune.init import load_init
from pretrain.config import ConfigError
from pretrain.config.schema import EvalSpec
from pretrain.run import Stage, build_model

log = logging.getLogger(__name__)


def build_finetune_model(cfg: FinetuneConfig) -> nn.Module:
    """The configured network with the init weights loaded and, with `init.drop_head`, a new zero head."""
    model = build_model(cfg)
    report = load_init(model, cfg.init.path, drop_head=cfg.init.drop_head)
    log.info("init: %s", report)
    if cfg.init.drop_head:
        replace_head(model, cfg.model.num_classes)
    return model


def default_evals(cfg: FinetuneConfig) -> dict[str, EvalSpec]:
    """`val`: accuracy on `data.val` every `eval.every_steps` and at the end; with `fewshot.enabled`, the linear
    few-shot probes (shots from `data.train`, scored on `data.val`) of the init weights (`fewshot_init`, the paper's
    metric of the pretrained representation) and of the fine-tuned weights (`fewshot`), as `fewshot.weights` says."""
    if not cfg.data.val:
        return {}
    e, f = cfg.eval, cfg.fewshot
    common = dict(every_steps=e.every_steps, batch_size=e.batch_size, preprocess=e.preprocess, crop_pct=e.crop_pct)
    specs = {"val": EvalSpec(type="classification", data=cfg.data.val, real_labels=e.real_labels, **common)}
    if f.enabled:
        for weights in f.weights:
            name = "fewshot" if weights == "trained" else "fewshot_init"
            specs[name] = EvalSpec(type="fewshot", train=cfg.data.train, val=cfg.data.val, shots=list(f.shots),
                                   seeds=list(f.seeds), l2_reg=f.l2_reg, weights=weights, **common)
    return specs


# The config keys that set the default evaluators' fields (for the start-up checks' messages).
EVAL_KEYS = {"val.data": "data.val", **{f"{name}.{field}": key for name in ("fewshot", "fewshot_init") for field, key
                                        in (("train", "data.train"), ("val", "data.val"), ("shots", "fewshot.shots"))}}


def check_init(cfg: FinetuneConfig, drop_head: bool | None = None) -> None:
    """`init.path` exists, is a weights format we read and fits the model (loaded into a copy of it on the meta
    device: no memory, no compute): a ConfigError naming `init.path`, in seconds, before the process group starts.
    `drop_head`: as `init.drop_head` says unless given (an evaluation keeps the checkpoint's head)."""
    path = cfg.init.path
    if not Path(path).exists():
        raise ConfigError(f"`init.path`: {path} does not exist (a pretrain run dir, a .safetensors export, an "
                          "official .npz or a timm .pth; pretrain first, or --set init.path=...)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta tensors is a no-op, and torch says so per tensor
        try:
            with torch.device("meta"):
                model = build_model(cfg)
        except (RuntimeError, NotImplementedError):  # a model that cannot be built on the meta device
            return
        try:
            load_init(model, path, drop_head=cfg.init.drop_head if drop_head is None else drop_head)
        except FinetuneError as err:
            raise ConfigError(f"`init.path`: {err}") from None
        except (RuntimeError, NotImplementedError, TypeError):  # surgery a meta tensor cannot take: the real load
            return  # checks it


FINETUNE = Stage(build_finetune_model, default_evals, exact_classes=True, eval_keys=EVAL_KEYS, check=check_init)
