"""Typed, strict configuration: YAML files in configs/ loaded into dataclasses, overridable with `--set`."""

from pretrain.config.batch import check_against_world
from pretrain.config.errors import ConfigError
from pretrain.config.loader import load_config, parse_override, save_config, to_dict
from pretrain.config.schema import (
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig", "CheckpointConfig", "ConfigError", "DataConfig", "LoggingConfig", "ModelConfig",
    "OptimConfig", "PretrainConfig", "ScheduleConfig", "TrainConfig", "check_against_world", "load_config",
    "parse_override", "save_config", "to_dict",
]
