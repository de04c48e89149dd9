"""The study runner: strict study files, the exact commands per arm, and the results table from the arms' runs."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli import run_main
from launch.local import BIN, ROOT
from launch.study import arm_commands, load_study, main, write_results
from pretrain.config import ConfigError

STUDY = {
    "name": "toy",
    "description": "Two arms.",
    "set": ["train.steps=5"],
    "eval": {"set": ["data.val=data/digits/val"], "fewshot": True},
    "arms": [{"name": "a", "config": "configs/demo.yaml"},
             {"name": "b", "config": "configs/demo.yaml", "set": ["optim.lr=0.01"]}],
}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_arm_commands_are_the_users_launch_commands(tmp_path):
    study = load_study(write(tmp_path, STUDY))
    pretrain, evaluate = arm_commands(study, study.arms[1], Path("runs/studies/toy"), ranks=2)
    launcher = [str(BIN / "deepspeed"), "--log_level", "error", "--num_accelerators", "2", "--master_port", "29531"]
    assert pretrain == [*launcher, "launch/pretrain.py", "--config", "configs/demo.yaml", "--run-dir",
                        "runs/studies/toy/b", "--resume", "auto", "--set", "train.steps=5", "optim.lr=0.01"]
    assert evaluate == [*launcher, "launch/evaluate.py", "--config", "configs/demo.yaml", "--checkpoint",
                        "runs/studies/toy/b", "--run-dir", "runs/studies/toy/b/eval", "--fewshot", "--set",
                        "train.steps=5", "optim.lr=0.01", "data.val=data/digits/val"]
    single, _ = arm_commands(study, study.arms[0], Path("out"), ranks=1)
    assert single[:2] == [sys.executable, "launch/pretrain.py"]


@pytest.mark.parametrize("change,message", [
    (lambda d: d["arms"][0].update(confg="x"), "`arms[0].confg`: unknown key; did you mean `arms[0].config`?"),
    (lambda d: d["arms"][0].update(config="configs/nope.yaml"), "`arms[0].config`: 'configs/nope.yaml' is not"),
    (lambda d: d["arms"][1].update(name="a"), "`arms`: ['a', 'a'] is not allowed; expected unique arm names"),
    (lambda d: d["arms"][1].update(name="b/c"), "`arms[1].name`: 'b/c' is not allowed"),
    (lambda d: d.update(arms=[]), "`arms`: [] is not allowed"),
])
def test_bad_study_files_name_the_key(tmp_path, change, message):
    doc = json.loads(json.dumps(STUDY))
    change(doc)
    with pytest.raises(ConfigError) as err:
        load_study(write(tmp_path, doc))
    assert str(err.value).startswith(message)


def fake_arm(out: Path, name: str, config: dict, top1: float) -> None:
    (out / name / "eval").mkdir(parents=True)
    (out / name / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"top1": top1, "top5": 1.0, "loss": 0.1, "num_samples": 10,
               "fewshot": {"1shot": {"mean": top1 / 2, "std": 0.0, "per_seed": [top1 / 2]}}}
    (out / name / "eval" / "metrics.json").write_text(json.dumps(metrics))


def test_results_table_shows_the_differing_keys_and_the_metrics(tmp_path):
    study = load_study(write(tmp_path, STUDY))
    out = tmp_path / "out"
    fake_arm(out, "a", {"model": {"name": "mixer_demo"}, "optim": {"lr": 0.002}, "train": {"steps": 5}}, 0.5)
    fake_arm(out, "b", {"model": {"name": "mixer_demo"}, "optim": {"lr": 0.01}, "train": {"steps": 5}}, 0.25)
    table = write_results(study, out)
    assert table == ("| arm | optim.lr | top-1 | top-5 | 1shot linear |\n|---|---|---|---|---|\n"
                     "| a | 0.002 | 50.00% | 100.00% | 25.00% |\n| b | 0.01 | 25.00% | 100.00% | 12.50% |\n")
    assert (out / "results.md").read_text() == "# Study toy\n\nTwo arms.\n\n" + table
    assert json.loads((out / "results.json").read_text()) == [
        {"arm": "a", "optim.lr": 0.002, "top1": 0.5, "top5": 1.0, "fewshot": {"1shot": 0.25}},
        {"arm": "b", "optim.lr": 0.01, "top1": 0.25, "top5": 1.0, "fewshot": {"1shot": 0.125}}]


def test_arms_not_evaluated_yet_are_left_out(tmp_path):
    study = load_study(write(tmp_path, STUDY))
    out = tmp_path / "out"
    fake_arm(out, "b", {"optim": {"lr": 0.01}}, 0.25)
    assert write_results(study, out).count("\n") == 3  # header, rule, arm b
    with pytest.raises(ConfigError, match="no arm of study toy has been evaluated"):
        write_results(study, tmp_path / "empty")


def test_dry_run_prints_the_commands_and_only_selects_arms(tmp_path, capsys):
    path = write(tmp_path, STUDY)
    assert main(["--study", str(path), "--only", "b", "--dry-run", "--ranks", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("runs/studies/toy/b" in line for line in lines)
    assert run_main(main, ["--study", str(path), "--only", "c", "--dry-run"]) == 2
    assert "error: --only: no arm named c" in capsys.readouterr().err


STUDY_FILES = sorted((Path(__file__).parent.parent / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in STUDY_FILES if not p.stem.startswith("digits_")], ids=lambda p: p.stem)
def test_every_study_arm_loads_for_pretraining_and_evaluation(path):
    from finetune.config import FinetuneConfig
    from pretrain.config import PretrainConfig, load_config

    study = load_study(path)
    for arm in study.arms:
        load_config(ROOT / arm.config, PretrainConfig, [*study.set, *arm.set])
        load_config(ROOT / arm.config, FinetuneConfig, [*study.set, *arm.set, *study.eval.set, "init.path=run"])
