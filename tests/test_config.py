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


def test_zero_0_accumulates_in_the_models_dtype(tmp_path):
    path = write(tmp_path, "data: {train: x}\n")
    for precision in ("bf16", "fp16"):  # fp16 used to reach DeepSpeed's NotImplementedError("unsupported mix")
        assert error_of(path, ["train.zero_stage=0", f"train.precision={precision}"]) == (
            f"`train.grad_accum_dtype`: 'fp32' is not allowed; expected '{precision}' with train.precision "
            f"'{precision}' and train.zero_stage 0 (DeepSpeed's ZeRO-0 {precision} path accumulates in {precision}), "
            "or train.zero_stage >= 1 to keep fp32 accumulation")
    assert "expected 'bf16'" in error_of(path, ["train.zero_stage=0", "train.grad_accum_dtype=fp16"])
    cfg = load_config(path, PretrainConfig,
                      ["train.zero_stage=0", "train.precision=fp16", "train.grad_accum_dtype=fp16"])
    assert (cfg.train.precision, cfg.train.grad_accum_dtype) == ("fp16", "fp16")
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


def test_duplicate_leaf_key_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "data: {train: x}\noptim:\n  lr: 0.1\n  weight_decay: 0.1\n  lr: 0.2\n")
    assert error_of(path) == (f"{path}: duplicate key `optim.lr` at line 5 (first at line 3); each key may appear "
                              "once in a mapping")


def test_duplicate_section_is_an_error_not_a_lost_section(tmp_path):
    path = write(tmp_path, "data: {train: x}\ntrain:\n  steps: 5\noptim: {lr: 0.1}\ntrain:\n  micro_batch: 8\n")
    assert error_of(path) == (f"{path}: duplicate key `train` at line 5 (first at line 2); each key may appear "
                              "once in a mapping")


def test_duplicate_inside_the_raw_deepspeed_section_and_a_flow_mapping(tmp_path):
    path = write(tmp_path, "data: {train: x}\ndeepspeed:\n  zero_optimization:\n    overlap_comm: true\n"
                           "    reduce_bucket_size: 5.0e+8\n    overlap_comm: false\n")
    assert error_of(path) == (f"{path}: duplicate key `deepspeed.zero_optimization.overlap_comm` at line 6 (first "
                              "at line 4); each key may appear once in a mapping")
    path = write(tmp_path, "data: {train: x, workers: 1, train: y}\n")
    assert error_of(path) == (f"{path}: duplicate key `data.train` at line 1 column 30 (first at line 1 column 8); "
                              "each key may appear once in a mapping")
    assert error_of(write(tmp_path, "data: {train: x}\n"), ["deepspeed={a: 1, a: 2}"]) == (
        "--set 'deepspeed={a: 1, a: 2}': duplicate key `a` at line 1 column 8 (first at line 1 column 2); each key "
        "may appear once in a mapping")


def test_merge_keys_may_be_overridden(tmp_path):
    path = write(tmp_path, "data: {train: x}\nevals:\n  a: &base {type: classification, data: v, every_steps: 5}\n"
                           "  b:\n    <<: *base\n    every_steps: 7\n")
    cfg = load_config(path, PretrainConfig)
    assert (cfg.evals["a"].every_steps, cfg.evals["b"].every_steps, cfg.evals["b"].data) == (5, 7, "v")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "data: {train: x}\ndata: {train: y}\n")
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, str(root / "launch" / "pretrain.py"), "--config", str(path)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {path}: duplicate key `data` at line 2 (first at line 1); each key may appear once in a mapping")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["model.name=mixer_b16", "model.img_size=225"],
     "`model.img_size`: 225 is not allowed; expected a multiple of the patch size of mixer_b16 (16); nearest: 224 "
     "or 240"),
    (["model.name=mixer_h14", "model.img_size=256"],
     "`model.img_size`: 256 is not allowed; expected a multiple of the patch size of mixer_h14 (14); nearest: 252 "
     "or 266"),
    (["model.name=mixer_b32", "model.img_size=24"],
     "`model.img_size`: 24 is not allowed; expected a multiple of the patch size of mixer_b32 (32); nearest: 32"),
    (["model.img_size=30", "model.patch_size=8"],
     "`model.img_size`: 30 is not allowed; expected a multiple of model.patch_size (8); nearest: 24 or 32"),
    (["model.name=deit_tiny_patch16_224", "model.img_size=30", "model.patch_size=4"],
     "`model.img_size`: 30 is not allowed; expected a multiple of model.patch_size (4); nearest: 28 or 32"),
])
def test_img_size_must_be_a_multiple_of_the_patch(tmp_path, overrides, message):
    assert error_of(write(tmp_path, "data: {train: x}\n"), overrides) == message


def test_img_size_multiples_and_models_without_a_known_patch_load(tmp_path):
    path = write(tmp_path, "data: {train: x}\n")
    assert load_config(path, PretrainConfig, ["model.name=mixer_h14", "model.img_size=448"]).model.img_size == 448
    assert load_config(path, PretrainConfig, ["model.name=mixer_b16", "model.img_size=384"]).model.img_size == 384
    assert load_config(path, PretrainConfig, ["model.img_size=36", "model.patch_size=6"]).model.patch_size == 6
    assert load_config(path, PretrainConfig, ["model.name=resnet18", "model.img_size=225"]).model.img_size == 225


def test_finetune_config_checks_the_patch_too(tmp_path):
    path = write(tmp_path, "data: {train: x}\ninit: {path: y}\nmodel: {name: mixer_l16, img_size: 450}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, FinetuneConfig)
    assert str(info.value) == ("`model.img_size`: 450 is not allowed; expected a multiple of the patch size of "
                               "mixer_l16 (16); nearest: 448 or 464")


@pytest.mark.parametrize("overrides, message", [
    (["deepspeed.bf16.enabled=false"],
     "`deepspeed.bf16.enabled`: False contradicts train.precision 'bf16' (from which the DeepSpeed JSON gets True); "
     "set train.precision instead"),
    (["deepspeed.fp16.enabled=true"],
     "`deepspeed.fp16.enabled`: True contradicts train.precision 'bf16' (from which the DeepSpeed JSON gets False); "
     "set train.precision instead"),
    (["train.precision=fp32", "deepspeed.bf16.enabled=true"],
     "`deepspeed.bf16.enabled`: True contradicts train.precision 'fp32' (from which the DeepSpeed JSON gets False); "
     "set train.precision instead"),
    (["deepspeed.train_batch_size=2048"],
     "`deepspeed.train_batch_size`: 2048 contradicts train.global_batch 4096 (from which the DeepSpeed JSON gets "
     "4096); set train.global_batch instead"),
    (["deepspeed.train_micro_batch_size_per_gpu=32"],
     "`deepspeed.train_micro_batch_size_per_gpu`: 32 contradicts train.micro_batch 64 (from which the DeepSpeed "
     "JSON gets 64); set train.micro_batch instead"),
    (["deepspeed.gradient_clipping=0.5"],
     "`deepspeed.gradient_clipping`: 0.5 contradicts optim.grad_clip 1.0 (from which the DeepSpeed JSON gets 1.0); "
     "set optim.grad_clip instead"),
    (["deepspeed.zero_optimization.stage=3"],
     "`deepspeed.zero_optimization.stage`: 3 contradicts train.zero_stage 1 (from which the DeepSpeed JSON gets 1); "
     "set train.zero_stage instead"),
    (["deepspeed.data_types.grad_accum_dtype=bf16"],
     "`deepspeed.data_types.grad_accum_dtype`: 'bf16' contradicts train.grad_accum_dtype 'fp32' (from which the "
     "DeepSpeed JSON gets 'fp32'); set train.grad_accum_dtype instead"),
    (["deepspeed.gradient_accumulation_steps=3"],
     "`deepspeed.gradient_accumulation_steps`: 3 contradicts train.global_batch / (train.micro_batch x world size) = "
     "4096 / (64 x world size), which is 3 for no world size; set train.global_batch or train.micro_batch instead "
     "(the accumulation is derived from them)"),
    (["deepspeed.zero_optimization=2"],
     "`deepspeed.zero_optimization`: 2 is not allowed; expected a mapping (it holds zero_optimization.stage, which "
     "comes from train.zero_stage: set that instead)"),
    (["deepspeed.optimizer.type=Adam"],
     "`deepspeed.optimizer`: not allowed; set optim.name, optim.lr, optim.betas, optim.weight_decay, ... (the "
     "optimizer is built from optim.* and handed to DeepSpeed, which then ignores this section)"),
])
def test_raw_deepspeed_keys_that_contradict_typed_keys(tmp_path, overrides, message):
    assert error_of(write(tmp_path, "data: {train: x}\n"), overrides) == message


def test_raw_deepspeed_keys_that_agree_or_that_we_do_not_model_load(tmp_path):
    path = write(tmp_path, "data: {train: x}\ndeepspeed:\n  bf16: {enabled: true}\n  fp16: {enabled: false}\n"
                           "  train_batch_size: 4096\n  gradient_clipping: 1\n  gradient_accumulation_steps: 16\n"
                           "  zero_optimization: {stage: 1, stage3_prefetch_bucket_size: 5.0e+7, overlap_comm: true}\n"
                           "  fp16_extra: {}\n")
    cfg = load_config(path, PretrainConfig)
    assert cfg.deepspeed["zero_optimization"]["stage3_prefetch_bucket_size"] == 5e7
    fp32 = load_config(path, PretrainConfig, ["train.precision=fp32", "deepspeed.bf16.enabled=false",
                                              "deepspeed.data_types.grad_accum_dtype=bf16"])
    assert fp32.deepspeed["data_types"] == {"grad_accum_dtype": "bf16"}  # not derived under fp32: not ours
