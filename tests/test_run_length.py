"""Run length in epochs: exact steps over the full training set (subset or not), warmup, and config errors."""

import logging
from pathlib import Path

import pytest

from pretrain.components.run_length import resolve_run_length, resolved_config
from pretrain.config import ConfigError, PretrainConfig, load_config


def config(**sections) -> PretrainConfig:
    cfg = PretrainConfig()
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def test_epochs_become_steps_over_the_full_set_rounded_up_and_warmup_rounded_half_up():
    cfg = config(train__epochs=300.0, train__global_batch=4096, schedule__warmup_epochs=5.0)
    length = resolve_run_length(cfg, 1281167, 1281167)  # ImageNet-1k: 93835.47 steps, warmup 1563.92
    assert (length.steps, length.warmup_steps) == (93836, 1564)
    assert (cfg.train.steps, cfg.schedule.warmup_steps) == (1000, 10000)  # the loaded config is not rewritten
    resolved = resolved_config(cfg, length)
    assert (resolved.train.steps, resolved.schedule.warmup_steps, resolved.train.epochs) == (93836, 1564, 300.0)
    again = resolve_run_length(resolved, 1281167, 1281167)
    assert (again.steps, again.warmup_steps) == (93836, 1564)  # resolving the recorded config changes nothing


def test_the_arithmetic_is_exact_for_the_decimal_written():
    cfg = config(train__epochs=1.1, train__global_batch=1, schedule__warmup_epochs=0.005)
    length = resolve_run_length(cfg, 100, 100)  # in floats 1.1 * 100 = 110.00000000000001, whose ceiling is 111
    assert (length.steps, length.warmup_steps) == (110, 1)  # warmup 0.5 rounds up
    cfg = config(train__epochs=1.1, train__global_batch=1, schedule__warmup_epochs=0.0049)
    length = resolve_run_length(cfg, 100, 100)
    assert (length.steps, length.warmup_steps) == (110, 0)


def test_a_subset_run_sees_as_many_images_as_the_full_run(caplog):
    cfg = config(train__epochs=3.0, train__global_batch=100, schedule__warmup_steps=7)
    with caplog.at_level(logging.INFO, logger="pretrain.components.run_length"):
        length = resolve_run_length(cfg, 1000, 100)
    assert (length.steps, length.warmup_steps) == (30, 7)
    assert caplog.messages == ["run length: 30 steps of 100 images = 3 epochs of the 1000 training samples "
                               "(30 passes over the 100 read); warmup 7 steps"]


def test_zero_epochs_keep_the_configured_steps():
    cfg = config(train__steps=123, schedule__warmup_steps=4)
    length = resolve_run_length(cfg, 1000, 10)
    assert (length.steps, length.warmup_steps) == (123, 4)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", "`train.epochs`: -1.0 is not allowed; expected a number >= 0 (0: train.steps sets the "
                        "length)"),
    ("train.epochs=.inf", "`train.epochs`: inf is not allowed; expected a number >= 0 (0: train.steps sets the "
                          "length)"),
    ("schedule.warmup_epochs=-0.5", "`schedule.warmup_epochs`: -0.5 is not allowed; expected a number >= 0 (0: "
                                    "schedule.warmup_steps sets the warmup)"),
    ("data.subset_fraction=0", "`data.subset_fraction`: 0.0 is not allowed; expected a fraction in (0, 1] (1 trains "
                               "on every sample)"),
    ("data.subset_fraction=1.5", "`data.subset_fraction`: 1.5 is not allowed; expected a fraction in (0, 1] (1 "
                                 "trains on every sample)"),
    ("data.subset_seed=-3", "`data.subset_seed`: -3 is not allowed; expected an integer >= 0"),
    ("train.epochs=many", "`train.epochs`: 'many' is not allowed; expected a number"),
])
def test_bad_epochs_and_subset_values_name_the_key(tmp_path: Path, override, message):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, PretrainConfig, [override])
    assert str(e.value) == message


def test_epochs_and_subset_load_from_yaml(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x, subset_fraction: 0.1, subset_seed: 2}\ntrain: {epochs: 300}\n"
                    "schedule: {warmup_epochs: 0.5}\n")
    cfg = load_config(path, PretrainConfig)
    assert (cfg.data.subset_fraction, cfg.data.subset_seed, cfg.train.epochs, cfg.schedule.warmup_epochs) == (
        0.1, 2, 300.0, 0.5)
