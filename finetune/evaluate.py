"""Exact evaluation on validation shards (each sample counted once over all ranks) and few-shot linear evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from finetune.config import FinetuneConfig
from finetune.errors import FinetuneError
from pretrain.data import Manifest, build_eval_loader, device_preprocess, eval_transform
from pretrain.distributed import DistEnv, gather
from pretrain.evaluators.accuracy import EvalAccumulator, load_real_labels
from pretrain.evaluators.fewshot_lsr import extract_features, fewshot_accuracy


def check_classes(manifest: Manifest, num_classes: int, what: str) -> None:
    """The head and the data must agree on the class count."""
    if manifest.num_classes != num_classes:
        raise FinetuneError(f"{what} has {manifest.num_classes} classes but the model's head has {num_classes}; "
                            f"set model.num_classes={manifest.num_classes}")


def eval_loader(cfg: FinetuneConfig, manifest: Manifest, env: DistEnv):
    transform = eval_transform(cfg.model.img_size, crop_pct=cfg.eval.crop_pct)
    return build_eval_loader(manifest, batch_size=cfg.eval.batch_size, rank=env.rank, world_size=env.world_size,
                             workers=cfg.data.workers, transform=transform)


def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], cfg: FinetuneConfig, manifest: Manifest,
             env: DistEnv, dtype: torch.dtype) -> dict[str, Any]:
    """Top-1/top-5/loss/per-class (and ReaL) accuracy of `forward` over every validation sample exactly once."""
    check_classes(manifest, cfg.model.num_classes, cfg.data.val)
    real = load_real_labels(cfg.eval.real_labels) if cfg.eval.real_labels else None
    acc = EvalAccumulator(cfg.model.num_classes, real_labels=real)
    preprocess = device_preprocess(cfg, dtype)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in eval_loader(cfg, manifest, env):
            x = preprocess(batch["image"].to(env.device))
            acc.update(forward(x).float(), batch["label"].to(env.device), keys=batch["key"])
    acc.all_reduce()
    result = acc.result()
    result["images_per_sec"] = result["num_samples"] / max(time.perf_counter() - start, 1e-9)
    return result


def fewshot(model: torch.nn.Module, cfg: FinetuneConfig, train: Manifest, val: Manifest, env: DistEnv,
            dtype: torch.dtype) -> dict[str, Any]:
    """The paper's few-shot linear evaluation on frozen pre-logit features (features gathered to every rank)."""

    preprocess = device_preprocess(cfg, dtype)

    def features(manifest: Manifest):
        feats, labels = extract_features(model, eval_loader(cfg, manifest, env), env.device, dtype,
                                         preprocess=preprocess)
        return _gather_rows(feats), _gather_rows(labels)

    train_feats, train_labels = features(train)
    test_feats, test_labels = features(val)
    f = cfg.fewshot
    return fewshot_accuracy(train_feats, train_labels, test_feats, test_labels, shots=tuple(f.shots),
                            seeds=tuple(f.seeds), l2_reg=f.l2_reg)


def _gather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenate a per-rank array of rows over all ranks (rank order; sizes may differ)."""
    return np.concatenate(gather(rows))
