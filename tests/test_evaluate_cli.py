"""launch/evaluate.py: a run dir alone is enough (its resolved config.yaml), results go inside the run dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.evaluate import config_and_output
from pretrain.config import ConfigError


def run_dir(root: Path) -> Path:
    run = root / "runs" / "mine"
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {name: mixer_demo}\n")
    (run / "final.safetensors").write_bytes(b"")
    return run


def test_a_run_dir_alone_uses_its_config_and_writes_inside_it(tmp_path):
    run = run_dir(tmp_path)
    for checkpoint in (run, run / "final.safetensors", run / "checkpoints" / "step-5"):
        assert config_and_output(str(checkpoint), None, None) == (run / "config.yaml", run / "eval")


def test_config_and_run_dir_options_override(tmp_path):
    run = run_dir(tmp_path)
    other = tmp_path / "runs" / "config.yaml"  # the case that wrote runs/config/eval/ before
    assert config_and_output(str(run), str(other), None) == (other, run / "eval")
    assert config_and_output(str(run), None, str(tmp_path / "out")) == (run / "config.yaml", tmp_path / "out")


def test_a_bare_weights_file_needs_a_config(tmp_path):
    weights = tmp_path / "mixer.npz"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^--checkpoint {weights}: not a run dir with a config.yaml; give --config"):
        config_and_output(str(weights), None, None)
    assert config_and_output(str(weights), "configs/finetune/demo.yaml", None) == (
        Path("configs/finetune/demo.yaml"), Path("runs/demo/eval"))
    with pytest.raises(ConfigError, match=r"^--checkpoint nowhere: no such file or folder"):
        config_and_output("nowhere", None, None)
