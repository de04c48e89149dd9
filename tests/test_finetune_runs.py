"""Real fine-tune and evaluation runs on the digits shards, launched as users launch them.

Pinned: fine-tuning a short pretraining run at twice the resolution (block-diagonal expansion) on 2 ranks improves
accuracy far above chance; the standalone evaluator reproduces the in-training metrics exactly on 1 and on 2 ranks
over the odd-sized (359) validation set; few-shot results are written; user mistakes are one line, exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers_runs import failure, run, write_config

FINETUNE, EVALUATE = "launch/finetune.py", "launch/evaluate.py"


@pytest.fixture(scope="module")
def pretrained(pretrained_demo) -> Path:
    """The session's 40-step demo pretraining run (tests/conftest.py)."""
    return pretrained_demo.run_dir


def finetune_config(tmp_path: Path, digits, init: Path, **overrides) -> str:
    base = {"data.train": str(digits[0]), "data.val": str(digits[1]), "init.path": str(init),
            "train.steps": 40, "checkpoint.every_steps": 1000, "data.workers": 1, "fewshot.shots": [1, 5],
            "fewshot.seeds": [0, 1], "eval.every_steps": 15}
    return str(write_config(tmp_path / "ft.yaml", "configs/finetune/demo.yaml", {**base, **overrides}))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, digits, pretrained) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("ft")
    cfg = finetune_config(tmp, digits, pretrained)
    proc = run(FINETUNE, 2, "--config", cfg, "--run-dir", str(tmp / "run"))
    assert proc.returncode == 0, failure(proc)
    return tmp / "run", cfg


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_finetune_at_twice_the_resolution_learns(finetuned):
    result = metrics(finetuned[0])
    assert result["num_samples"] == 359  # every validation digit, counted once over 2 ranks
    assert result["top1"] > 0.35, result["top1"]  # chance is 0.1 and the new head starts at zero (40+40 steps)
    assert result["top5"] >= result["top1"]
    assert set(result["fewshot"]) == {"1shot", "5shot"}
    assert result["fewshot"]["5shot"]["mean"] > 0.4


def test_finetune_evaluates_at_its_cadence_and_few_shot_of_the_init_and_the_trained_weights(finetuned):
    result = metrics(finetuned[0])
    assert [(r["name"], r["step"], r["weights"]) for r in result["history"]] == [
        ("fewshot_init", 0, "init"), ("val", 15, "trained"), ("fewshot", 15, "trained"), ("val", 30, "trained"),
        ("fewshot", 30, "trained"), ("val", 40, "trained"), ("fewshot", 40, "trained")]
    assert result["step"] == 40 and result["fewshot_weights"] == "trained"
    assert result["evals"]["fewshot_init"]["fewshot"]["5shot"]["mean"] > 0.3  # the 40-step pretrained features
    assert result["history"][-2]["top1"] == result["top1"] and result["fewshot"] == result["history"][-1]["fewshot"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_standalone_evaluation_reproduces_the_metrics_exactly(tmp_path, finetuned, ranks):
    run_dir, cfg = finetuned
    proc = run(EVALUATE, ranks, "--config", cfg, "--checkpoint", str(run_dir), "--run-dir", str(tmp_path))
    assert proc.returncode == 0, failure(proc)
    ours, trained = metrics(tmp_path), metrics(run_dir)
    assert ours["num_samples"] == trained["num_samples"] == 359
    assert (ours["top1"], ours["top5"], ours["per_class_accuracy"]) == (
        trained["top1"], trained["top5"], trained["per_class_accuracy"])
    assert ours["loss"] == pytest.approx(trained["loss"], rel=1e-6)


def test_evaluating_a_run_needs_only_the_run_and_writes_inside_it(finetuned):
    run_dir = finetuned[0]
    proc = run(EVALUATE, 1, "--checkpoint", str(run_dir), "--set", "eval.batch_size=64")
    assert proc.returncode == 0, failure(proc)
    ours, trained = metrics(run_dir / "eval"), metrics(run_dir)
    assert (ours["num_samples"], ours["top1"], ours["per_class_accuracy"]) == (
        359, trained["top1"], trained["per_class_accuracy"])
    assert proc.stdout.strip().splitlines()[-1] == (
        f"{run_dir} at 64 px: top-1 {ours['top1']:.2%}, top-5 {ours['top5']:.2%} on 359 samples (all metrics: "
        f"{run_dir / 'eval' / 'metrics.json'})")


def test_finetune_user_mistakes_are_one_line_with_status_2(tmp_path, digits, pretrained):
    def last_line(**overrides) -> str:
        proc = run(FINETUNE, 1, "--config", finetune_config(tmp_path, digits, pretrained, **overrides),
                   "--run-dir", str(tmp_path / "run"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, failure(proc)
        return proc.stderr.strip().splitlines()[-1]

    assert last_line(**{"model.num_classes": 7}) == (
        f"error: {digits[0]} has 10 classes but the model's head has 7; set model.num_classes=10")
    assert "cannot expand token mixing from grid 8x8 (image 32x32) to grid 12x12" in last_line(
        **{"model.img_size": 48})
    not_mixer = tmp_path / "notes.pth"
    not_mixer.write_bytes(b"not a checkpoint")
    assert last_line(**{"init.path": str(not_mixer)}).startswith(f"error: `init.path`: {not_mixer}: cannot read "
                                                                 "weights: ")
