"""Strict config loading: exact messages for unknown keys, wrong types and ranges; overrides; resolved dump."""

from pathlib import Path

import pytest
import yaml

from finetune.config import FinetuneConfig
from pretrain.config import ConfigError, PretrainConfig, check_against_world, load_config, save_config, to_dict

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
FINETUNE_CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/finetune/*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, PretrainConfig, overrides)
    return str(info.value)


def test_unknown_key_names_path_and_closest_key(tmp_path):
    path = write(tmp_path, "data: {train: x}\noptim:\n  lrr: 0.1\n")
    assert error_of(path) == "`optim.lrr`: unknown key; did you mean `optim.lr`?"


def test_unknown_section_and_override_key(tmp_path):
    path = write(tmp_path, "data: {train: x}\n")
    assert error_of(path, ["trian.steps=3"]) == "`trian`: unknown key; did you mean `train`?"
    assert error_of(path, ["train.stepz=3"]) == "`train.stepz`: unknown key; did you mean `train.steps`?"
    assert error_of(path, ["nothing_like_it=3"]) == "`nothing_like_it`: unknown key"


def test_wrong_type_and_range_name_key_value_and_allowed(tmp_path):
    path = write(tmp_path, "data: {train: x}\n")
    assert error_of(path, ["train.steps=abc"]) == "`train.steps`: 'abc' is not allowed; expected an integer"
    assert error_of(path, ["optim.lr=-1"]) == "`optim.lr`: -1.0 is not allowed; expected a positive number"
    assert error_of(path, ["train.zero_stage=4"]) == "`train.zero_stage`: 4 is not allowed; expected 0, 1, 2 or 3"
    assert error_of(path, ["train.precision=fp8"]) == (
        "`train.precision`: 'fp8' is not allowed; expected 'bf16', 'fp16' or 'fp32'")
    assert error_of(path, ["augment.scale=[0.5]"]) == (
        "`augment.scale`: [0.5] is not allowed; expected a list of 2 values")
    assert error_of(path, ["model.grad_checkpointing=1"]) == (
        "`model.grad_checkpointing`: 1 is not allowed; expected true or false")


def test_bf16_with_fp32_accumulation_needs_zero_1(tmp_path):
    path = write(tmp_path, "data: {train: x}\n")
    assert error_of(path, ["train.zero_stage=0", "train.precision=bf16"]) == (
        "`train.grad_accum_dtype`: 'fp32' is not allowed; expected 'bf16' with train.zero_stage 0 (DeepSpeed's "
        "ZeRO-0 bf16 path accumulates in bf16), or train.zero_stage >= 1 to keep fp32 accumulation")
    cfg = load_config(path, PretrainConfig, ["train.zero_stage=0", "train.grad_accum_dtype=bf16"])
    assert (cfg.train.zero_stage, cfg.train.grad_accum_dtype) == (0, "bf16")


def test_missing_data_path_is_an_error(tmp_path):
    path = write(tmp_path, "train: {steps: 3}\n")
    assert error_of(path).startswith("`data.train`: '' is not allowed")


def test_overrides_apply_with_yaml_types(tmp_path):
    path = write(tmp_path, "data: {train: x}\noptim: {lr: 3e-3}\n")
    cfg = load_config(path, PretrainConfig, ["train.zero_stage=3", "augment.scale=[0.5, 1.0]",
                                             "deepspeed.zero_optimization.overlap_comm=true"])
    assert cfg.optim.lr == 0.003  # YAML 1.1 reads 3e-3 as a string; it is still a float here
    assert cfg.train.zero_stage == 3
    assert cfg.augment.scale == (0.5, 1.0)
    assert cfg.deepspeed == {"zero_optimization": {"overlap_comm": True}}
    assert error_of(path, ["optim.lr"]) == "--set 'optim.lr': expected key=value, e.g. optim.lr=3e-3"


def test_batch_must_divide_by_world_size(tmp_path):
    cfg = load_config(write(tmp_path, "data: {train: x}\ntrain: {global_batch: 192, micro_batch: 32}\n"),
                      PretrainConfig)
    assert check_against_world(cfg, 2) == 3
    with pytest.raises(ConfigError) as info:
        check_against_world(cfg, 4)
    assert str(info.value) == ("`train.global_batch`: 192 is not divisible by train.micro_batch x world size = "
                               "32 x 4 = 128; choose a multiple of 128")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "data: {train: x}\n"), PretrainConfig, ["optim.lr=0.5"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml", PretrainConfig) == cfg
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == to_dict(cfg)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]  # no temp file left behind


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_pretrain_configs_load(path):
    cfg = load_config(path, PretrainConfig)
    assert cfg.train.global_batch % cfg.train.micro_batch == 0


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=[p.stem for p in FINETUNE_CONFIGS])
def test_shipped_finetune_configs_load(path):
    cfg = load_config(path, FinetuneConfig)
    assert cfg.init.path and cfg.data.val
    assert cfg.train.global_batch % cfg.train.micro_batch == 0


def test_finetune_sections_are_strict(tmp_path):
    path = write(tmp_path, "data: {train: x}\ninit: {path: y}\nfewshot: {shotz: [1]}\n")
    with pytest.raises(ConfigError, match=r"^`fewshot.shotz`: unknown key; did you mean `fewshot.shots`\?$"):
        load_config(path, FinetuneConfig)
