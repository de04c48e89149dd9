"""The run's evaluators, each at its own cadence: which are due, running them (on the EMA too), the record.

Every evaluation is one record `{"step", "name", "type", "weights", ...metrics}`; the records are a checkpoint
component (a resume continues the history), go to TensorBoard as `eval/<name>/<metric>` (`ema_<metric>` for the
EMA, `<n>shot` for few-shot; `best/eval/...` the best so far; both are HParams' metric columns) and to
`metrics.json` (the history, the latest record of each evaluator, and at the top level the latest classification
and few-shot results of the trained weights).

What a step owes and has not run yet is `pending`, (name, weights) pairs, saved with the history: a run preempted
before or during the evaluations of its step checkpoints that step with them pending, and the resumed run runs them
(:meth:`Evaluations.run_pending`) before it trains on, so the records have no hole and none twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.components.ema import EMA
from pretrain.config.schema import EvalSpec
from pretrain.evaluators.accuracy import write_metrics
from pretrain.evaluators.lockstep import failures_shared
from pretrain.telemetry.monitor import Monitor

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module, Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]
SCALARS = ("top1", "top5", "loss", "real_top1")
WEIGHTS = ("init", "trained", "ema")  # the order a step's evaluations run in


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one record, under `eval/<name>/`."""
    prefix = f"eval/{record['name']}/" + ("ema_" if record["weights"] == "ema" else "")
    if record["type"] == "fewshot":
        return {f"{prefix}{shots}": res["mean"] for shots, res in record["fewshot"].items()}
    return {f"{prefix}{k}": record[k] for k in SCALARS if record.get(k) is not None}


def best_of(history: list[Mapping[str, Any]], record: Mapping[str, Any]) -> dict[str, float]:
    """`best/<tag>` for each scalar of `record`: the best value its evaluator and weights reached so far (the
    lowest loss, the highest of everything else), for TensorBoard's HParams table."""
    same = [scalars_of(r) for r in history if (r["name"], r["weights"]) == (record["name"], record["weights"])]
    pick = {tag: min if tag.rsplit("/", 1)[-1].endswith("loss") else max for tag in scalars_of(record)}
    return {f"best/{tag}": choose(s[tag] for s in same if tag in s) for tag, choose in pick.items()}


class Evaluations:
    """Runs `evaluators` (name -> callable) as their `specs` say, on the trained weights and on the `ema`."""

    def __init__(self, evaluators: Mapping[str, Evaluator], specs: Mapping[str, EvalSpec], total_steps: int,
                 monitor: Monitor, metrics_path: Path, rank: int, ema: EMA | None = None) -> None:
        self.evaluators, self.specs = dict(evaluators), dict(specs)
        self.total_steps, self.monitor, self.metrics_path, self.rank, self.ema = (
            total_steps, monitor, metrics_path, rank, ema)
        self.history: list[dict[str, Any]] = []
        self.pending: list[tuple[str, str]] = []  # (name, weights) owed at the current step, in run order

    def metric_tags(self) -> list[str]:
        """The TensorBoard tags of every metric the evaluators log (the latest value) and of its best so far."""
        tags = []
        for name, spec in self.specs.items():
            if spec.type == "fewshot":
                metrics = [f"{n}shot" for n in spec.shots]
            else:
                metrics = [k for k in SCALARS if k != "real_top1" or spec.real_labels]
            kinds = [spec.weights] + (["ema"] if self.ema is not None and spec.weights != "init" else [])
            for weights in kinds:
                prefix = f"eval/{name}/" + ("ema_" if weights == "ema" else "")
                tags += [prefix + m for m in metrics]
        return tags + [f"best/{tag}" for tag in tags]

    def due(self, step: int) -> list[str]:
        """The evaluators of the trained weights whose cadence falls on `step` (the last step: all of them)."""
        names = []
        for name, spec in self.specs.items():
            if spec.weights == "init" or self.done(name, step):
                continue
            if step >= self.total_steps or (spec.every_steps and step % spec.every_steps == 0):
                names.append(name)
        return names

    def done(self, name: str, step: int | None = None) -> bool:
        return any(r["name"] == name and (step is None or r["step"] == step) for r in self.history)

    def run_initial(self, model: nn.Module, preprocess, step: int) -> None:
        """The `weights: init` evaluators, once, before the first update."""
        names = [n for n, s in self.specs.items() if s.weights == "init" and not self.done(n)]
        if names and step == 0:
            self.pending = [(n, "init") for n in names]
            self.run_pending(model, preprocess, step)

    def run(self, names: list[str], model: nn.Module, preprocess, step: int) -> None:
        """`names` at `step` on the trained weights, then on the EMA."""
        self.defer(names)
        self.run_pending(model, preprocess, step)

    def defer(self, names: list[str]) -> None:
        """Owe `names` (trained weights and EMA) at the current step: run by :meth:`run_pending`, saved meanwhile."""
        kinds = ("trained", "ema") if self.ema is not None else ("trained",)
        self.pending = [(n, w) for w in kinds for n in names]

    def run_pending(self, model: nn.Module, preprocess, step: int) -> None:
        """Run what is owed at `step`; each evaluation leaves `pending` when its record is in. A preemption
        (`pretrain.cluster.preemption.Preempted`, raised on every rank at once) leaves the rest pending."""
        try:
            for weights in WEIGHTS:
                names = [n for n, w in self.pending if w == weights]
                if names:
                    with self.ema.swapped_in() if weights == "ema" else nullcontext():
                        self._run(names, model, preprocess, step, weights)
        finally:
            self.write()

    def _run(self, names: list[str], model: nn.Module, preprocess, step: int, weights: str) -> None:
        for name in names:
            spec = self.specs[name]
            log.info("evaluating %s (%s weights) at step %d", name, weights, step)
            with failures_shared():  # an error on one rank ends the evaluation on all of them
                result = self.evaluators[name](model, preprocess)
            record = {"step": step, "name": name, "type": spec.type, "weights": weights}
            record.update({"fewshot": result} if spec.type == "fewshot" else result)
            self.history.append(record)
            self.pending.remove((name, weights))
            self.monitor.log_scalars(step, {**scalars_of(record), **best_of(self.history, record)})
            log.info("step %d eval %s (%s weights): %s", step, name, weights,
                     ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.4f}" for k, v in scalars_of(record).items()))

    def latest(self) -> dict[str, dict[str, Any]]:
        """The newest record of each evaluator and weights, keyed `<name>` (`<name>/ema` for the EMA)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.history:
            out[r["name"] + ("/ema" if r["weights"] == "ema" else "")] = r
        return out

    def summary(self) -> dict[str, Any]:
        """What `metrics.json` holds."""
        latest = self.latest()
        out: dict[str, Any] = {}
        first_cls = next((r for r in latest.values() if r["type"] == "classification" and r["weights"] != "ema"),
                         None)
        if first_cls is not None:
            out.update({k: v for k, v in first_cls.items() if k not in ("name", "type", "weights")})
        fewshot = [r for r in latest.values() if r["type"] == "fewshot" and r["weights"] != "ema"]
        first_fs = next((r for r in fewshot if r["weights"] == "trained"), fewshot[0] if fewshot else None)
        if first_fs is not None:
            out["fewshot"] = first_fs["fewshot"]
            out["fewshot_weights"] = first_fs["weights"]
            out.setdefault("step", first_fs["step"])
        out["evals"] = latest
        out["history"] = [{k: v for k, v in r.items() if k != "per_class_accuracy"} for r in self.history]
        return out

    def write(self) -> None:
        if self.rank == 0 and self.history:
            write_metrics(self.metrics_path, self.summary())

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "pending": [list(p) for p in self.pending]}

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """The history and what was owed at the saved step (a checkpoint from before `pending`: the history alone).
        Owed evaluations of evaluators no longer configured, or of an EMA the run no longer keeps, are dropped."""
        state = state if isinstance(state, dict) else {"history": state, "pending": []}
        self.history = list(state["history"])
        self.pending = [(n, w) for n, w in state["pending"]
                        if n in self.specs and (w != "ema" or self.ema is not None)]


