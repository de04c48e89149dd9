"""First errors fast and named: every check that needs no process group runs before one starts, and its message
names the key (and the way out)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pretrain.run
from finetune.config import FinetuneConfig, load_finetune_config
from finetune.stage import FINETUNE
from pretrain.cluster.distributed import detect_env
from pretrain.config import ConfigError, PretrainConfig, load_config
from pretrain.models import create_model, save_weights
from pretrain.run import PRETRAIN, check_before_start, train
from tests.helpers_data_prep import class_tree, good_images, write_files
from tests.helpers_shards import write_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes of 24 samples each (train) and of 4 each (val)."""
    root = tmp_path_factory.mktemp("shards")
    write_dataset(str(root / "train"), [72], num_classes=3)
    write_dataset(str(root / "val"), [12], num_classes=3)
    return root


def pretrain_cfg(data: Path, **overrides) -> PretrainConfig:
    sets = {"data.train": data / "train", "model.num_classes": 3, "train.global_batch": 8, "train.micro_batch": 8,
            "data.workers": 1, **overrides}
    return load_config(ROOT / "configs/demo.yaml", PretrainConfig, [f"{k}={v}" for k, v in sets.items()])


def error(cfg, stage=PRETRAIN) -> str:
    with pytest.raises(ConfigError) as info:
        check_before_start(cfg, stage, detect_env({}))
    return str(info.value)


def test_a_misplaced_key_suggests_the_closest_key_of_any_section(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x}\noptim:\n  warmup_step: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PretrainConfig)
    assert str(info.value) == "`optim.warmup_step`: unknown key; did you mean `schedule.warmup_steps`?"
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/demo.yaml", PretrainConfig, ["train.warmup_steps=3"])
    assert str(info.value) == "`train.warmup_steps`: unknown key; did you mean `schedule.warmup_steps`?"


def test_a_folder_of_images_names_the_key_and_the_data_prep_command(tmp_path, data):
    photos = tmp_path / "photos" / "train"
    class_tree(str(photos))
    assert error(pretrain_cfg(data, **{"data.train": photos})) == (
        f"`data.train`: no manifest.json in {photos} (a folder of images? build shards first: python -m data_prep "
        f"build --layout folders --source {photos} --out {photos}-shards)")
    flat = tmp_path / "flat"
    write_files(str(flat), good_images())
    assert error(pretrain_cfg(data, **{"data.train": flat})) == (
        f"`data.train`: no manifest.json in {flat} (a flat folder of images? shards need labels: one sub-folder per "
        f"class, then python -m data_prep build --layout folders --source {flat} --out {flat}-shards; or --layout "
        "list --list LABELS)")
    assert error(pretrain_cfg(data, **{"data.train": tmp_path / "none"})) == (
        f"`data.train`: {tmp_path / 'none'} does not exist (a shard folder made by python -m data_prep build)")


def test_evaluator_paths_name_their_key(tmp_path, data):
    cfg = pretrain_cfg(data, **{"evals.fs.type": "fewshot", "evals.fs.train": data / "train",
                                "evals.fs.val": tmp_path / "v"})
    assert error(cfg).startswith(f"`evals.fs.val`: {tmp_path / 'v'} does not exist")
    ft = load_config(ROOT / "configs/finetune/demo.yaml", FinetuneConfig,
                     [f"data.train={data / 'train'}", f"data.val={tmp_path / 'v'}", "model.num_classes=3"])
    assert error(ft, FINETUNE).startswith(f"`data.val`: {tmp_path / 'v'} does not exist")


def test_few_shot_counts_are_checked_against_the_manifest(data):
    cfg = load_config(ROOT / "configs/finetune/demo.yaml", FinetuneConfig,
                      [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "model.num_classes=3",
                       "fewshot.shots=[5,25]", "train.global_batch=8", "train.micro_batch=8"])
    assert error(cfg, FINETUNE) == (
        f"`fewshot.shots`: 25-shot needs 25 examples of every class; class 0 ('class0') has 24 in data.train "
        f"({data / 'train'}); use shots of at most 24")
    evals = pretrain_cfg(data, **{"evals.fs.type": "fewshot", "evals.fs.train": data / "train",
                                  "evals.fs.val": data / "val", "evals.fs.shots": "[30]"})
    assert error(evals).startswith("`evals.fs.shots`: 30-shot needs 30 examples of every class; class 0")


def test_a_wide_pretraining_head_on_few_classes_is_one_warning(data, caplog):
    with caplog.at_level(logging.WARNING):
        check_before_start(pretrain_cfg(data, **{"model.num_classes": 21843}), PRETRAIN, detect_env({}))
    assert [r.getMessage() for r in caplog.records] == [
        f"`model.num_classes`: a 21843-way head on the 3 classes of {data / 'train'}: allowed, but 21840 outputs "
        "never see a label; set model.num_classes=3 unless you mean it"]
    caplog.clear()
    check_before_start(pretrain_cfg(data), PRETRAIN, detect_env({}))
    assert not caplog.records


def test_init_weights_are_checked_for_format_and_fit(tmp_path, data):
    save_weights(create_model("mixer_demo"), tmp_path / "w.safetensors")
    sets = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "model.num_classes=3",
            "train.global_batch=8", "train.micro_batch=8"]
    missing = load_finetune_config(ROOT / "configs/finetune/demo.yaml", [*sets, f"init.path={tmp_path / 'no'}"])
    assert error(missing, FINETUNE) == (
        f"`init.path`: {tmp_path / 'no'} does not exist (a pretrain run dir, a .safetensors export, an official "
        ".npz or a timm .pth; pretrain first, or --set init.path=...)")
    kept_head = load_finetune_config(ROOT / "configs/finetune/demo.yaml",
                                     [*sets, f"init.path={tmp_path / 'w.safetensors'}", "init.drop_head=false"])
    assert error(kept_head, FINETUNE) == (f"`init.path`: checkpoint {tmp_path / 'w.safetensors'} has a 10-class "
                                          "head but the model has 3 classes; use drop_head=True to start from a zero "
                                          "head")
    (tmp_path / "notes.pth").write_bytes(b"not weights")
    bad = load_finetune_config(ROOT / "configs/finetune/demo.yaml", [*sets, f"init.path={tmp_path / 'notes.pth'}"])
    assert error(bad, FINETUNE).startswith(f"`init.path`: {tmp_path / 'notes.pth'}: cannot read weights")


def test_checks_come_before_the_process_group(tmp_path, data, monkeypatch):
    def no_process_group(env):
        raise AssertionError("the process group was started before the checks")

    monkeypatch.setattr(pretrain.run, "init_distributed", no_process_group)
    with pytest.raises(ConfigError, match=r"^`data.train`: .* does not exist"):
        train(pretrain_cfg(data, **{"data.train": tmp_path / "none"}), tmp_path / "run", resume=False)
    ft = load_finetune_config(ROOT / "configs/finetune/demo.yaml", [
        f"data.train={data / 'train'}", f"data.val={data / 'val'}", "model.num_classes=3",
        f"init.path={tmp_path / 'no'}", "train.global_batch=8", "train.micro_batch=8"])
    with pytest.raises(ConfigError, match=r"^`init.path`: .* does not exist"):
        train(ft, tmp_path / "run", resume=False, stage=FINETUNE)


def test_a_first_error_comes_within_seconds_of_the_command(tmp_path, data):
    photos = tmp_path / "photos"
    class_tree(str(photos))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "launch/finetune.py", "--config", "configs/finetune/demo.yaml", "--set",
                           f"data.train={photos}", f"data.val={data / 'val'}", f"init.path={tmp_path / 'no'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: `data.train`: no manifest.json in {photos} (a "
                                                           "folder of images?")
    assert "DeepSpeed" not in proc.stderr and "deepspeed" not in proc.stdout  # nothing of DeepSpeed's start-up
    assert took < 60, f"{took:.1f} s"  # a quiet machine: seconds (the imports); a loaded one: some more
