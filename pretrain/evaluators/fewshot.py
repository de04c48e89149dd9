"""The few-shot evaluator: the paper's linear n-shot accuracy of frozen pre-logit features (fewshot_lsr.py).

Features of the `train` and `val` shard sets are extracted in lockstep on every rank (ZeRO-3-safe), gathered to
every rank with their sample keys and put in key order before the shots are drawn, so the n-shot sets depend
neither on `data.workers` nor on the world size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrain.config import PretrainConfig
from pretrain.config.schema import EvalSpec
from pretrain.distributed import DistEnv, gather
from pretrain.evaluators.classification import spec_loader
from pretrain.evaluators.fewshot_lsr import FewShotError, fewshot_accuracy
from pretrain.evaluators.forward import forward_batches, pre_logits


def extract_features(model: nn.Module, loader: Iterable[dict[str, Any]],
                     preprocess: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                     img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features (float32 `[N, D]`) and labels (int64 `[N]`) of every sample of `loader` (batches with
    `image`, `label` and `key`) over all ranks, in sample-key order; collective: every rank calls it."""
    feats, labels, keys = [], [], []
    for batch, features in forward_batches(model, loader, preprocess, pre_logits, device, img_size):
        feats.append(features.cpu())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).long())
        keys += batch["key"]
    mine = (torch.cat(feats).numpy() if feats else None, torch.cat(labels).numpy() if labels else None, keys)
    parts = [p for p in gather(mine) if p[0] is not None]
    if not parts:
        raise FewShotError("the few-shot sets yielded no samples: no features to extract")
    all_keys = [k for p in parts for k in p[2]]
    order = np.argsort(np.array(all_keys, dtype=object), kind="stable")
    return np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order]


class FewshotEvaluator:
    """n-shot linear-probe accuracy per `spec.shots`, averaged over `spec.seeds`."""

    def __init__(self, name: str, spec: EvalSpec, cfg: PretrainConfig, env: DistEnv) -> None:
        self.name, self.spec, self.cfg, self.env = name, spec, cfg, env
        self.train_manifest, self.train_loader = spec_loader(spec, spec.train, cfg, env)
        self.val_manifest, self.val_loader = spec_loader(spec, spec.val, cfg, env)

    def __call__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        device, size = self.env.device, self.cfg.model.img_size
        train_x, train_y = extract_features(model, self.train_loader, preprocess, device, size)
        test_x, test_y = extract_features(model, self.val_loader, preprocess, device, size)
        s = self.spec
        classes = max(self.train_manifest.num_classes, self.val_manifest.num_classes)
        return fewshot_accuracy(train_x, train_y, test_x, test_y, shots=tuple(s.shots), seeds=tuple(s.seeds),
                                l2_reg=s.l2_reg, num_classes=classes)
