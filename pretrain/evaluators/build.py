"""Evaluators from their specs (`evals:` of either stage)."""

from __future__ import annotations

from collections.abc import Mapping

from pretrain.cluster.distributed import DistEnv
from pretrain.config import PretrainConfig
from pretrain.config.schema import EvalSpec
from pretrain.evaluators.classification import ClassificationEvaluator
from pretrain.evaluators.fewshot import FewshotEvaluator
from pretrain.evaluators.runner import Evaluator


def build_evaluators(specs: Mapping[str, EvalSpec], cfg: PretrainConfig, env: DistEnv,
                     exact_classes: bool) -> dict[str, Evaluator]:
    """One evaluator per spec; `exact_classes`: classification data must have exactly the head's classes."""
    out: dict[str, Evaluator] = {}
    for name, spec in specs.items():
        if spec.type == "classification":
            out[name] = ClassificationEvaluator(name, spec, cfg, env, exact_classes)
        else:
            out[name] = FewshotEvaluator(name, spec, cfg, env)
    return out
