"""Fine-tuning takes its model from the init checkpoint unless the config names one; a disagreement is one line;
every pretrain config has its fine-tune config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune.config import load_finetune_config
from finetune.init_model import checkpoint_model, run_config
from finetune.stage import build_finetune_model
from pretrain.config import ConfigError, PretrainConfig, load_config, save_config
from pretrain.models import create_model, save_weights

ROOT = Path(__file__).resolve().parents[1]
# Every pretraining config but the from-scratch ImageNet-1k one (evaluated as it is: no fine-tuning stage).
PRETRAIN_MIXERS = sorted(p for p in ROOT.glob("configs/mixer_*.yaml") if not p.stem.endswith("_scratch"))


def pretrain_run(root: Path, name: str = "mixer_demo", patch_size: int = 0, img_size: int = 32) -> Path:
    """A pretrain run dir as the trainer leaves it: its resolved config.yaml and final.safetensors."""
    run = root / "pretrain_run"
    run.mkdir()
    cfg = PretrainConfig()
    cfg.model.name, cfg.model.patch_size, cfg.model.img_size, cfg.data.train = name, patch_size, img_size, "x"
    save_config(cfg, run / "config.yaml")
    if name == "mixer_demo":
        save_weights(create_model(name, img_size=img_size, **({"patch_size": patch_size} if patch_size else {})),
                     run / "final.safetensors")
    return run


def finetune_yaml(tmp_path: Path, init: Path, model: str = "") -> Path:
    path = tmp_path / "ft.yaml"
    path.write_text(f"init: {{path: {init}}}\ndata: {{train: x, val: y}}\nmodel: {{img_size: 64, num_classes: 3"
                    f"{', name: ' + model if model else ''}}}\n")
    return path


def test_the_model_comes_from_the_init_run(tmp_path):
    run = pretrain_run(tmp_path, patch_size=8)
    cfg = load_finetune_config(finetune_yaml(tmp_path, run))
    assert (cfg.model.name, cfg.model.patch_size, cfg.model.img_size) == ("mixer_demo", 8, 64)
    model = build_finetune_model(cfg)  # the checkpoint fits the model it named: loads, expands 4x4 -> 8x8 tokens
    assert model.stem.proj.weight.shape[-1] == 8 and model.head.out_features == 3


def test_a_config_naming_another_model_is_one_line(tmp_path):
    run = pretrain_run(tmp_path, name="mixer_s16")
    with pytest.raises(ConfigError) as info:
        load_finetune_config(ROOT / "configs/finetune/mixer_b16_in1k.yaml", [f"init.path={run}"])
    assert str(info.value) == (
        f"`model.name`: the checkpoint is mixer_s16, the config says mixer_b16 (init.path {run}); use "
        "configs/finetune/mixer_s16_in1k.yaml, or --set model.name=mixer_s16 to fine-tune the checkpoint's model")
    cfg = load_finetune_config(ROOT / "configs/finetune/mixer_s16_in1k.yaml", [f"init.path={run}"])
    assert cfg.model.name == "mixer_s16"


def test_a_config_naming_another_patch_size_is_one_line(tmp_path):
    run = pretrain_run(tmp_path, patch_size=8)
    with pytest.raises(ConfigError, match=r"^`model.patch_size`: the checkpoint is mixer_demo with patch size 8, "
                                          r"the config says 4 \(init.path .*\); leave model.patch_size out"):
        load_finetune_config(finetune_yaml(tmp_path, run), ["model.patch_size=4"])


def test_bare_weights_are_matched_to_their_variant(tmp_path):
    save_weights(create_model("mixer_demo", patch_size=8, img_size=32), tmp_path / "w.safetensors")
    held = checkpoint_model(tmp_path / "w.safetensors")
    assert (held.name, held.patch_size) == ("mixer_demo", 8)
    save_weights(create_model("mixer_demo"), tmp_path / "plain.safetensors")
    assert checkpoint_model(tmp_path / "plain.safetensors").patch_size == 0
    save_weights({"w": create_model("mixer_demo").head.weight}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"^`model.name`: not in the config, and init.path .* does not record"):
        load_finetune_config(finetune_yaml(tmp_path, tmp_path / "other.safetensors"))


def test_checkpoints_folders_and_run_weights_lead_to_the_run_config(tmp_path):
    run = pretrain_run(tmp_path)
    step = run / "checkpoints" / "step-10"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    for path in (run, run / "checkpoints", step, step / "model.safetensors", run / "final.safetensors"):
        assert run_config(path) == run / "config.yaml", path


def test_a_missing_init_path_leaves_the_config_alone(tmp_path):
    cfg = load_finetune_config(finetune_yaml(tmp_path, tmp_path / "nowhere", model="mixer_demo"))
    assert cfg.model.name == "mixer_demo"  # the start-up check names init.path


@pytest.mark.parametrize("pretrain", PRETRAIN_MIXERS, ids=[p.stem for p in PRETRAIN_MIXERS])
def test_every_pretrain_config_has_its_finetune_config(pretrain):
    finetune = ROOT / "configs" / "finetune" / f"{pretrain.stem}_in1k.yaml"
    assert finetune.is_file(), f"no fine-tune config for {pretrain.name}"
    pre = load_config(pretrain, PretrainConfig)
    cfg = load_finetune_config(finetune)
    assert cfg.model.name == pre.model.name and cfg.init.path == f"runs/{pretrain.stem}"
    recipe = yaml.safe_load(finetune.read_text())
    assert (recipe["optim"]["name"], recipe["optim"]["weight_decay"], recipe["train"]["global_batch"],
            recipe["schedule"]["name"], recipe["optim"]["grad_clip"]) == ("sgd", 0.0, 512, "cosine", 1.0)


def test_the_variants_own_patch_size_given_explicitly_agrees(tmp_path):
    run = pretrain_run(tmp_path)
    assert load_finetune_config(finetune_yaml(tmp_path, run), ["model.patch_size=4"]).model.patch_size == 4
