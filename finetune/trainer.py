"""Fine-tuning: the pretraining Trainer with a loaded, resized, re-headed model, and an exact evaluation at the end.

Everything else (DeepSpeed engine, input pipeline, checkpoints, resume, preemption, monitoring) is the pretraining
stage's, reused unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from finetune.config import FinetuneConfig
from finetune.evaluate import check_classes, evaluate, fewshot
from finetune.head import replace_head
from finetune.init import load_init
from pretrain.data import load_manifest
from pretrain.distributed import detect_env, init_distributed, shutdown_distributed
from pretrain.evaluators.accuracy import write_metrics
from pretrain.preemption import PreemptionFlag
from pretrain.trainer import Trainer, TrainResult, build_model

log = logging.getLogger(__name__)


class FinetuneTrainer(Trainer):
    """Trainer whose model starts from `init.path`, expanded to `model.img_size`, with a new zero head."""

    cfg: FinetuneConfig

    def check_data(self) -> None:
        """The new head and the data must agree on the class count."""
        check_classes(self.manifest, self.cfg.model.num_classes, self.cfg.data.train)

    def build_model(self) -> nn.Module:
        model = build_model(self.cfg)
        report = load_init(model, self.cfg.init.path, drop_head=self.cfg.init.drop_head)
        log.info("init: %s", report)
        if self.cfg.init.drop_head:
            replace_head(model, self.cfg.model.num_classes)
        return model

    def evaluate(self) -> dict[str, Any]:
        """Exact top-1/top-5 (and few-shot when enabled) on `data.val`; written to metrics.json and TensorBoard."""
        cfg, env = self.cfg, self.env
        val = load_manifest(cfg.data.val)
        self.engine.eval()
        metrics = evaluate(self.engine, cfg, val, env, self.dtype)
        if cfg.fewshot.enabled:
            metrics["fewshot"] = fewshot(self.engine.module, cfg, self.manifest, val, env, self.dtype)
        self.engine.train()
        metrics["step"] = self.step
        self.monitor.log_scalars(self.step, {f"eval/{k}": metrics[k] for k in ("top1", "top5", "loss")})
        if env.rank == 0:
            write_metrics(self.run_dir / "metrics.json", metrics)
        return metrics


def finetune(cfg: FinetuneConfig, run_dir: Path, resume: bool) -> tuple[TrainResult, dict[str, Any] | None]:
    """Fine-tune (or resume) in `run_dir`; evaluate when training reached `train.steps`."""
    env = detect_env()
    init_distributed(env)
    trainer = FinetuneTrainer(cfg, run_dir, env)
    if resume:
        trainer.resume()
    with PreemptionFlag() as preemption:
        result = trainer.run(preemption)
    try:
        metrics = trainer.evaluate() if not result.preempted and cfg.data.val else None
    finally:
        trainer.monitor.close()
    shutdown_distributed()
    return result, metrics

