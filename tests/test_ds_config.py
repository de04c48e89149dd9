"""The DeepSpeed JSON is derived from the YAML: batch arithmetic, precision, ZeRO stage, raw overrides merged."""

import pytest

from pretrain.config import ConfigError, PretrainConfig
from pretrain.ds_config import deepspeed_config, merge


def config(**train) -> PretrainConfig:
    cfg = PretrainConfig()
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_batch_accumulation_precision_and_stage():
    cfg = config(global_batch=4096, micro_batch=64, precision="bf16", zero_stage=2)
    cfg.optim.grad_clip = 1.0
    ds = deepspeed_config(cfg, world_size=16)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        4096, 64, 4)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["zero_allow_untested_optimizer"] is True  # the fine-tune recipe's SGD under ZeRO
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["data_types"] == {"grad_accum_dtype": "fp32", "buffer_dtype": "bf16"}
    assert ds["gradient_clipping"] == 1.0


def test_fp32_has_no_low_precision_keys_enabled():
    ds = deepspeed_config(config(precision="fp32", global_batch=64, micro_batch=32), world_size=2)
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and "data_types" not in ds


def test_raw_section_is_merged_over_derived_keys():
    cfg = config(global_batch=64, micro_batch=32, zero_stage=3)
    cfg.deepspeed = {"zero_optimization": {"overlap_comm": True}, "bf16": {"enabled": False}}
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert ds["bf16"] == {"enabled": False}
    assert merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_indivisible_world_size_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible by train.micro_batch x world size = 32 x 3 = 96"):
        deepspeed_config(config(global_batch=64, micro_batch=32), world_size=3)
