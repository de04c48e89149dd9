"""Evaluator mechanics in one process: float32 logits, lockstep, cadence, records, metrics.json and EMA swaps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.cluster.preemption import Preempted, PreemptionFlag, watched
from pretrain.components.ema import EMA
from pretrain.config import ConfigError, PretrainConfig, load_config
from pretrain.config.schema import EvalSpec
from pretrain.evaluators.forward import evaluation_mode, logits_fp32, pre_logits
from pretrain.evaluators.lockstep import lockstep
from pretrain.evaluators.runner import Evaluations, scalars_of
from pretrain.models import create_model
from pretrain.telemetry.monitor import Monitor


def test_the_head_is_applied_in_float32_to_bf16_features():
    torch.manual_seed(0)
    model = create_model("mixer_demo", num_classes=10, img_size=32)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.02)
        model.head.bias.fill_(10.0)  # logits near 10, where bf16 steps are 1/16
    model = model.to(torch.bfloat16)
    x = torch.randn(16, 3, 32, 32, dtype=torch.bfloat16)
    with evaluation_mode(model):
        ours = logits_fp32(model, x)
        feats = pre_logits(model, x)
        bf16 = model(x).float()
    assert ours.dtype == torch.float32
    assert torch.equal(ours, F.linear(feats, model.head.weight.float(), model.head.bias.float()))
    assert not torch.equal(ours, bf16)
    assert ((bf16 >= 8) & (bf16 < 16)).all() and (bf16 * 16 == (bf16 * 16).round()).all()  # on the 1/16 grid
    ties = sum(len(row) - len(set(row.tolist())) for row in bf16)
    assert ties > 0 and sum(len(row) - len(set(row.tolist())) for row in ours) == 0  # float32 breaks them


def test_lockstep_without_a_process_group_yields_this_ranks_batches_only():
    assert list(lockstep([{"a": 1}, {"a": 2}], torch.device("cpu"))) == [{"a": 1}, {"a": 2}]
    assert list(lockstep([], torch.device("cpu"))) == []


def test_lockstep_stops_before_the_next_batch_once_the_watched_flag_is_set():
    with PreemptionFlag() as flag, watched(flag):
        batches = lockstep([{"a": 1}, {"a": 2}, {"a": 3}], torch.device("cpu"))
        assert next(batches) == {"a": 1}
        flag.received = 10  # as the SIGUSR1 handler records it
        with pytest.raises(Preempted):
            next(batches)
    assert list(lockstep([{"a": 1}], torch.device("cpu"))) == [{"a": 1}]  # outside `watched`: never stops


class Counting:
    """An evaluator whose result is the number of times it ran."""

    def __init__(self, kind: str) -> None:
        self.kind, self.calls = kind, 0

    def __call__(self, model, preprocess):
        self.calls += 1
        if self.kind == "fewshot":
            return {"5shot": {"mean": 0.1 * self.calls, "std": 0.0, "per_seed": [0.1 * self.calls]}}
        return {"num_samples": 3, "top1": 0.5, "top5": 1.0, "loss": 1.0 * self.calls, "per_class_accuracy": [0.5]}


def evaluations(tmp_path, specs, ema=None) -> Evaluations:
    evaluators = {name: Counting(spec.type) for name, spec in specs.items()}
    monitor = Monitor(tmp_path, rank=1, total_steps=14)  # not rank 0: writes nothing
    return Evaluations(evaluators, specs, 14, monitor, tmp_path / "metrics.json", rank=0, ema=ema)


def test_each_evaluator_is_due_at_its_cadence_and_all_are_due_at_the_end(tmp_path):
    specs = {"val": EvalSpec(type="classification", data="v", every_steps=5),
             "fs": EvalSpec(type="fewshot", train="t", val="v", every_steps=7),
             "end": EvalSpec(type="classification", data="v")}
    e = evaluations(tmp_path, specs)
    assert {step: e.due(step) for step in range(1, 15) if e.due(step)} == {
        5: ["val"], 7: ["fs"], 10: ["val"], 14: ["val", "fs", "end"]}
    e.run(["val"], None, None, 5)
    assert e.due(5) == []  # done at this step (a resume does not repeat it)


def test_records_go_to_metrics_json_with_their_step_and_survive_a_state_round_trip(tmp_path):
    specs = {"val": EvalSpec(type="classification", data="v", every_steps=5),
             "init": EvalSpec(type="fewshot", train="t", val="v", weights="init"),
             "fs": EvalSpec(type="fewshot", train="t", val="v")}
    e = evaluations(tmp_path, specs)
    e.run_initial(None, None, 0)
    e.run_initial(None, None, 0)  # once
    e.run(["val"], None, None, 5)
    e.run(["val", "fs"], None, None, 14)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["step"], r["name"], r["weights"]) for r in written["history"]] == [
        (0, "init", "init"), (5, "val", "trained"), (14, "val", "trained"), (14, "fs", "trained")]
    assert (written["step"], written["loss"], written["fewshot_weights"]) == (14, 2.0, "trained")
    assert written["fewshot"]["5shot"]["mean"] == pytest.approx(0.1)
    assert "per_class_accuracy" in written and all("per_class_accuracy" not in r for r in written["history"])
    again = evaluations(tmp_path, specs)
    again.load_state_dict(e.state_dict())
    assert again.summary() == e.summary() and again.due(14) == [] and again.due(10) == ["val"]


def test_tags_name_the_evaluator_and_the_weights():
    assert scalars_of({"name": "val", "type": "classification", "weights": "ema", "top1": 0.5, "top5": 0.9,
                       "loss": 1.0, "real_top1": None}) == {
        "eval/val/ema_top1": 0.5, "eval/val/ema_top5": 0.9, "eval/val/ema_loss": 1.0}
    assert scalars_of({"name": "fs", "type": "fewshot", "weights": "trained",
                       "fewshot": {"5shot": {"mean": 0.25}}}) == {"eval/fs/5shot": 0.25}


def test_the_ema_is_swapped_in_for_the_evaluation_and_the_weights_put_back(tmp_path):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()  # halfway to the new weights
    seen = []
    specs = {"val": EvalSpec(type="classification", data="v")}
    e = evaluations(tmp_path, specs, ema=ema)
    e.evaluators["val"] = lambda m, p: seen.append(m.weight.detach().clone()) or Counting("classification")(m, p)
    e.run(["val"], model, None, 14)
    assert torch.equal(seen[0], trained["weight"] + 1.0)
    assert torch.allclose(seen[1], trained["weight"] + 0.5, atol=1e-6, rtol=0)
    assert torch.equal(model.weight, trained["weight"] + 1.0)
    assert [r["weights"] for r in e.history] == ["trained", "ema"]


def test_an_ema_under_zero3_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config("configs/demo.yaml", PretrainConfig, ["ema.decay=0.999", "train.zero_stage=3"])
    assert str(info.value) == ("`ema.decay`: 0.999 is not allowed; expected 0 with train.zero_stage 3 (the EMA keeps "
                               "the full weights on every rank; use ZeRO 0-2)")


class PreemptedAt:
    """An evaluator that is preempted on its `at`-th call (as lockstep raises it), else counts."""

    def __init__(self, at: int) -> None:
        self.at, self.inner = at, Counting("classification")

    def __call__(self, model, preprocess):
        if self.inner.calls + 1 == self.at:
            self.at = 0
            raise Preempted("a preemption signal arrived during the evaluation")
        return self.inner(model, preprocess)


def test_an_evaluation_abandoned_by_a_preemption_is_owed_in_the_checkpoint_and_run_once_after_the_resume(tmp_path):
    model = torch.nn.Linear(3, 2)
    specs = {"a": EvalSpec(type="classification", data="v", every_steps=5),
             "b": EvalSpec(type="classification", data="v", every_steps=5)}
    e = evaluations(tmp_path, specs, ema=EMA(model, decay=0.5))
    e.evaluators["b"] = PreemptedAt(2)  # b's trained run completes, its EMA run is abandoned
    with pytest.raises(Preempted):
        e.run(["a", "b"], model, None, 5)
    assert [(r["name"], r["weights"]) for r in e.history] == [("a", "trained"), ("b", "trained"), ("a", "ema")]
    saved = json.loads(json.dumps(e.state_dict()))  # what the checkpoint holds
    assert saved["pending"] == [["b", "ema"]]

    resumed = evaluations(tmp_path, specs, ema=EMA(model, decay=0.5))
    resumed.load_state_dict(saved)
    resumed.run_pending(model, None, 5)
    records = [(r["step"], r["name"], r["weights"]) for r in resumed.history]
    assert sorted(records) == sorted({(5, n, w) for n in "ab" for w in ("trained", "ema")})  # each once, no hole
    assert resumed.pending == [] and resumed.state_dict()["pending"] == []


def test_the_evaluations_due_at_a_preempted_step_are_owed_and_a_pre_pending_checkpoint_still_loads(tmp_path):
    specs = {"val": EvalSpec(type="classification", data="v", every_steps=5)}
    e = evaluations(tmp_path, specs)
    e.defer(e.due(5))  # preempted right after step 5's update, before its evaluation
    resumed = evaluations(tmp_path, specs)
    resumed.load_state_dict(e.state_dict())
    resumed.run_pending(None, None, 5)
    assert [(r["step"], r["name"]) for r in resumed.history] == [(5, "val")] and resumed.due(5) == []
    old = evaluations(tmp_path, specs)
    old.load_state_dict([{"step": 5, "name": "val", "type": "classification", "weights": "trained"}])  # a list
    assert old.pending == [] and old.due(5) == []
