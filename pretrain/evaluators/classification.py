"""The classification evaluator: exact top-1/top-5/loss/per-class (and ImageNet-ReaL top-1) on a labelled shard set.

Each rank reads a contiguous share of the samples (no padding, no duplicates), the counts are all-reduced once;
ranks with a shorter share make stand-in forward passes in lockstep (see lockstep.py), so ZeRO-3 cannot hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pretrain.cluster.distributed import DistEnv
from pretrain.config import PretrainConfig
from pretrain.config.schema import EvalSpec
from pretrain.data import Manifest, build_eval_loader, check_head_classes, eval_transform, load_manifest
from pretrain.evaluators.accuracy import EvalAccumulator, load_real_labels
from pretrain.evaluators.forward import forward_batches, logits_fp32

# The config's names of the evaluation preprocessing -> eval_transform's.
RESIZE_MODES = {"crop": "crop", "resize": "squash"}


def spec_loader(spec: EvalSpec, path: str, cfg: PretrainConfig, env: DistEnv, manifest: Manifest | None = None):
    """This rank's exact share of the shards at `path` (or of `manifest`, a subset of them), preprocessed as `spec`
    says."""
    manifest = load_manifest(path) if manifest is None else manifest
    transform = eval_transform(cfg.model.img_size, crop_pct=spec.crop_pct, resize=RESIZE_MODES[spec.preprocess],
                               mean=cfg.augment.mean, std=cfg.augment.std, jpeg_decoder=cfg.data.jpeg_decoder)
    loader = build_eval_loader(manifest, batch_size=spec.batch_size, rank=env.rank, world_size=env.world_size,
                               workers=cfg.data.workers, transform=transform, pin_memory=env.device.type == "cuda")
    return manifest, loader


class ClassificationEvaluator:
    """Accuracy of the model on `spec.data`; `exact_classes`: the data must have as many classes as the head."""

    def __init__(self, name: str, spec: EvalSpec, cfg: PretrainConfig, env: DistEnv, exact_classes: bool) -> None:
        self.name, self.spec, self.cfg, self.env = name, spec, cfg, env
        self.manifest, self.loader = spec_loader(spec, spec.data, cfg, env)
        check_head_classes(self.manifest, spec.data, cfg.model.num_classes, exact_classes)
        self.real = load_real_labels(spec.real_labels) if spec.real_labels else None

    def __call__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        device = self.env.device
        acc = EvalAccumulator(self.cfg.model.num_classes, real_labels=self.real)
        start = time.perf_counter()
        for batch, logits in forward_batches(model, self.loader, preprocess, logits_fp32, device,
                                             self.cfg.model.img_size):
            acc.update(logits, batch["label"].to(device), keys=batch["key"], sources=batch["source"])
        acc.all_reduce()
        result = acc.result()
        result["images_per_sec"] = result["num_samples"] / max(time.perf_counter() - start, 1e-9)
        return result
