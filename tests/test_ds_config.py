"""The DeepSpeed JSON is derived from the YAML: batch arithmetic, precision, ZeRO stage, raw overrides merged."""

import pytest

from pretrain.config import ConfigError, PretrainConfig
from pretrain.config.deepspeed import deepspeed_config, merge


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
    # fp32: `bf16: {enabled: false}` agrees with the precision (with bf16 it is an error, see below)
    cfg = config(global_batch=64, micro_batch=32, zero_stage=3, precision="fp32")
    cfg.deepspeed = {"zero_optimization": {"overlap_comm": True}, "bf16": {"enabled": False}}
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert ds["bf16"] == {"enabled": False}
    assert merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_indivisible_world_size_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible by train.micro_batch x world size = 32 x 3 = 96"):
        deepspeed_config(config(global_batch=64, micro_batch=32), world_size=3)


def error_of(cfg: PretrainConfig, world_size: int) -> str:
    with pytest.raises(ConfigError) as info:
        deepspeed_config(cfg, world_size)
    return str(info.value)


def test_raw_precision_that_contradicts_train_precision_is_an_error():
    cfg = config(global_batch=64, micro_batch=32, precision="bf16")
    cfg.deepspeed = {"bf16": {"enabled": False}}
    assert error_of(cfg, 1) == ("`deepspeed.bf16.enabled`: False contradicts train.precision 'bf16' (from which the "
                                "DeepSpeed JSON gets True); set train.precision instead")
    cfg.deepspeed = {"fp16": {"enabled": True, "loss_scale_window": 500}}
    assert error_of(cfg, 1) == ("`deepspeed.fp16.enabled`: True contradicts train.precision 'bf16' (from which the "
                                "DeepSpeed JSON gets False); set train.precision instead")
    cfg.deepspeed = {"bf16": {"enabled": 1}}  # DeepSpeed would read 1 as true; we ask for the typed key
    assert error_of(cfg, 1).startswith("`deepspeed.bf16.enabled`: 1 contradicts train.precision 'bf16'")
    cfg.deepspeed = {"bf16": True}
    assert error_of(cfg, 1) == ("`deepspeed.bf16`: True is not allowed; expected a mapping (it holds bf16.enabled, "
                                "which comes from train.precision: set that instead)")
    cfg.deepspeed = {"data_types": {"buffer_dtype": "fp32"}}
    assert error_of(cfg, 1) == ("`deepspeed.data_types.buffer_dtype`: 'fp32' contradicts train.precision 'bf16' "
                                "(from which the DeepSpeed JSON gets 'bf16'); set train.precision instead")


def test_raw_batch_stage_and_clipping_that_contradict_typed_keys_are_errors():
    cfg = config(global_batch=4096, micro_batch=64, zero_stage=2)
    cfg.deepspeed = {"gradient_accumulation_steps": 8}  # possible at some world size (8), not at 16
    assert error_of(cfg, 16) == (
        "`deepspeed.gradient_accumulation_steps`: 8 contradicts train.global_batch / (train.micro_batch x world "
        "size) = 4096 / (64 x 16) = 4; set train.global_batch or train.micro_batch instead (the accumulation is "
        "derived from them)")
    assert deepspeed_config(cfg, 8)["gradient_accumulation_steps"] == 8  # agrees at 8 ranks
    for raw, message in [
        ({"train_batch_size": 1024}, "`deepspeed.train_batch_size`: 1024 contradicts train.global_batch 4096"),
        ({"train_micro_batch_size_per_gpu": 128},
         "`deepspeed.train_micro_batch_size_per_gpu`: 128 contradicts train.micro_batch 64"),
        ({"gradient_clipping": 0.0}, "`deepspeed.gradient_clipping`: 0.0 contradicts optim.grad_clip 1.0"),
        ({"zero_optimization": {"stage": 3, "overlap_comm": True}},
         "`deepspeed.zero_optimization.stage`: 3 contradicts train.zero_stage 2"),
    ]:
        cfg.deepspeed = raw
        assert error_of(cfg, 16).startswith(message), raw
    cfg.deepspeed = {"scheduler": {"type": "WarmupLR"}}
    assert error_of(cfg, 16).startswith("`deepspeed.scheduler`: not allowed; set schedule.name")


def test_raw_keys_that_agree_or_that_we_do_not_model_stay_allowed():
    cfg = config(global_batch=4096, micro_batch=64, zero_stage=3)
    cfg.deepspeed = {"train_batch_size": 4096, "gradient_accumulation_steps": 4, "gradient_clipping": 1,
                     "bf16": {"enabled": True},
                     "zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 50_000_000},
                     "fp16": {"loss_scale_window": 500}, "activation_checkpointing": {"partition_activations": True}}
    ds = deepspeed_config(cfg, world_size=16)
    assert ds["zero_optimization"] == {"stage": 3, "stage3_prefetch_bucket_size": 50_000_000}
    assert ds["fp16"]["loss_scale_window"] == 500 and ds["fp16"]["enabled"] is False
    assert ds["gradient_accumulation_steps"] == 4 and ds["activation_checkpointing"] == {"partition_activations": True}
