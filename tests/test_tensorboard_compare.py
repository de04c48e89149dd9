"""TensorBoard that compares runs: HParams with metric columns, the best value of each metric, the same few-shot
tags in both stages, a legible token-mixing picture."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from finetune.config import FinetuneConfig
from finetune.stage import default_evals
from launch.demo import PRETRAIN_EVALS
from pretrain.config import PretrainConfig, load_config
from pretrain.config.schema import EvalSpec
from pretrain.evaluators.runner import Evaluations, scalars_of
from pretrain.models import create_model
from pretrain.telemetry.monitor import Monitor
from pretrain.telemetry.weight_images import legible, token_mixing_image

ROOT = Path(__file__).resolve().parents[1]


class Fixed:
    """An evaluator returning the next of its `results`."""

    def __init__(self, results: list[dict]) -> None:
        self.results = iter(results)

    def __call__(self, model, preprocess):
        return next(self.results)


def cls(top1: float, loss: float) -> dict:
    return {"num_samples": 4, "top1": top1, "top5": 1.0, "loss": loss, "per_class_accuracy": [top1]}


def test_hparams_declare_the_evaluators_metrics_as_columns(tmp_path):
    specs = {"val": EvalSpec(type="classification", data="v"),
             "fewshot": EvalSpec(type="fewshot", train="t", val="v", shots=[1, 5])}
    e = Evaluations({}, specs, 10, Monitor(tmp_path, rank=1, total_steps=10), tmp_path / "m.json", rank=0)
    tags = ["eval/val/top1", "eval/val/top5", "eval/val/loss", "eval/fewshot/1shot", "eval/fewshot/5shot"]
    assert e.metric_tags() == tags + [f"best/{t}" for t in tags]
    with Monitor(tmp_path, rank=0, total_steps=10) as monitor:
        monitor.log_config({"optim": {"lr": 0.1}, "model": {"name": "mixer_demo"}}, e.metric_tags())
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    content = acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert [m.name.tag for m in experiment.metric_infos] == e.metric_tags()
    assert {h.name for h in experiment.hparam_infos} == {"optim.lr", "model.name"}


def test_best_values_are_logged_beside_the_latest(tmp_path):
    specs = {"val": EvalSpec(type="classification", data="v")}
    evaluator = Fixed([cls(0.5, 1.0), cls(0.25, 0.5), cls(0.75, 2.0)])
    with Monitor(tmp_path, rank=0, total_steps=30) as monitor:
        e = Evaluations({"val": evaluator}, specs, 30, monitor, tmp_path / "m.json", rank=0)
        for step in (10, 20, 30):
            e.run(["val"], None, None, step)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    values = {tag: [s.value for s in acc.Scalars(tag)] for tag in ("eval/val/top1", "best/eval/val/top1",
                                                                  "best/eval/val/loss")}
    assert values == {"eval/val/top1": [0.5, 0.25, 0.75], "best/eval/val/top1": [0.5, 0.5, 0.75],
                      "best/eval/val/loss": [1.0, 0.5, 0.5]}


def test_both_stages_of_the_demo_log_few_shot_under_the_same_tag():
    pretrain = load_config(ROOT / "configs/demo.yaml", PretrainConfig, PRETRAIN_EVALS)
    finetune = load_config(ROOT / "configs/finetune/demo.yaml", FinetuneConfig)
    record = {"type": "fewshot", "weights": "trained", "fewshot": {"5shot": {"mean": 0.5}}}
    pre_tags = {tag for name, spec in pretrain.evals.items() if spec.type == "fewshot"
                for tag in scalars_of({**record, "name": name})}
    ft_tags = {tag for name, spec in default_evals(finetune).items() if spec.type == "fewshot"
               and spec.weights == "trained" for tag in scalars_of({**record, "name": name})}
    assert pre_tags == ft_tags == {"eval/fewshot/5shot"}
    assert set(pretrain.evals) <= set(default_evals(finetune))  # val and fewshot in both


def test_the_token_mixing_picture_is_enlarged_without_blur():
    picture = token_mixing_image(create_model("mixer_demo"))
    big = legible(picture)
    assert tuple(picture.shape) == (1, 71, 146) and tuple(big.shape) == (1, 71 * 7, 146 * 7)  # 7 = ceil(960/146)
    assert torch.equal(big[:, ::7, ::7], picture)
    assert torch.equal(big, picture.repeat_interleave(7, 1).repeat_interleave(7, 2))


def test_the_fine_tune_configs_draw_the_weights_too():
    for path in sorted((ROOT / "configs" / "finetune").glob("*.yaml")):
        assert load_config(path, FinetuneConfig).logging.image_every_steps > 0, path.name
