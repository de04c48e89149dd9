"""Any timm model as `model.name`: the same network as timm's factory, exact errors, MFU FLOPs, fp32 export."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from pretrain.components.export import export_weights, full_fp32_state_dict
from pretrain.components.run_length import resolve_run_length
from pretrain.config import ConfigError, PretrainConfig, load_config
from pretrain.models import WeightsError, create_model, is_mixer, mixer_flops_per_image, read_weights
from pretrain.run import build_model, model_flops_per_image
from pretrain.telemetry.mfu import forward_flops_per_image

TINY = {"num_classes": 10, "img_size": 32, "patch_size": 4}


@pytest.mark.parametrize("name, kwargs", [
    ("convit_tiny", TINY),
    ("deit_tiny_patch16_224", {**TINY, "drop_path_rate": 0.1}),
    ("resnet18", {"num_classes": 7, "in_chans": 1}),
])
def test_timm_model_is_timms_own_network(name, kwargs):
    torch.manual_seed(0)
    ours = create_model(name, **kwargs, drop_rate=0.0, init="flax", gelu="exact").eval()
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, **kwargs).eval()
    assert type(ours) is type(theirs) and not is_mixer(ours)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    image = torch.randn(2, kwargs.get("in_chans", 3), 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(image), theirs(image))


def test_resnet_ignores_img_size_and_runs_at_it():
    torch.manual_seed(0)
    ours = create_model("resnet18", num_classes=7, img_size=64).eval()
    torch.manual_seed(0)
    theirs = timm.create_model("resnet18", num_classes=7).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(image), theirs(image))


def test_model_errors_are_exact():
    cases = {
        ("convit_smal", ()): "unknown model 'convit_smal'; closest: convit_small, gcvit_small, convnext_small",
        ("resnet18", (("patch_size", 4),)): "resnet18 (ResNet) has no patches: its constructor takes no patch_size",
        ("resnet18", (("init", "timm"),)): (
            "init='timm' applies to MLP-Mixer models only; resnet18 is a timm model and it is built with timm's own "
            "initialisation (leave init at 'flax')"),
        ("convit_tiny", (("gelu", "tanh"),)): (
            "gelu='tanh' applies to MLP-Mixer models only; convit_tiny is a timm model and it uses its own "
            "activations (leave gelu at 'exact')"),
    }
    for (name, overrides), message in cases.items():
        with pytest.raises(ValueError) as info:
            create_model(name, **dict(overrides))
        assert str(info.value) == message


def test_config_validation_names_the_key_before_anything_runs(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x}\nmodel: {name: convit_tiny, img_size: 32, patch_size: 4}\n")
    assert load_config(path, PretrainConfig).model.patch_size == 4

    def error(*overrides: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(path, PretrainConfig, overrides)
        return str(info.value)

    assert error("model.name=deit_smal") == (
        "`model.name`: unknown model 'deit_smal'; closest: deit_small_patch16_224, "
        "deit_small_distilled_patch16_224, rdnet_small")
    assert error("model.name=resnet18") == (
        "`model.patch_size`: resnet18 (ResNet) has no patches: its constructor takes no patch_size")
    assert error("model.init=timm").startswith("`model.init`: init='timm' applies to MLP-Mixer models only;")
    assert error("model.patch_size=-1") == (
        "`model.patch_size`: -1 is not allowed; expected an integer >= 0 (0: the model's own)")


def test_build_model_seeds_and_turns_on_grad_checkpointing(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x}\nmodel: {name: deit_tiny_patch16_224, img_size: 32, patch_size: 4, "
                    "num_classes: 10, grad_checkpointing: true}\ntrain: {seed: 3}\n")
    cfg = load_config(path, PretrainConfig)
    first, second = build_model(cfg), build_model(cfg)
    assert first.grad_checkpointing and first.patch_embed.patch_size == (4, 4)
    ours, again = first.state_dict(), second.state_dict()
    assert all(torch.equal(ours[k], again[k]) for k in ours)


def test_mfu_flops_count_one_forward_and_leave_model_and_rng_alone():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    flops = model_flops_per_image(model, 64)
    assert flops == forward_flops_per_image(model, 64) > 0
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch-norm statistics too
    convit = create_model("convit_tiny", **TINY)
    before = dict(convit.named_buffers())
    assert forward_flops_per_image(convit, 32) > 0
    assert all(buf is before[k] for k, buf in convit.named_buffers())  # relative indices not rebuilt in fp32
    mixer = create_model("mixer_demo")
    assert model_flops_per_image(mixer, 32) == mixer_flops_per_image(mixer) == forward_flops_per_image(mixer, 32)


def test_export_keeps_persistent_buffers_in_fp32(tmp_path):
    model = create_model("convit_tiny", **TINY)
    model(torch.zeros(1, 3, 32, 32))  # builds ConViT's non-persistent relative indices
    resnet = create_model("resnet18", num_classes=10).to(torch.bfloat16)  # no engine: its bf16 weights are exported
    export_weights(SimpleNamespace(module=resnet), tmp_path / "resnet.safetensors", rank=0)
    for module, state in ((model, full_fp32_state_dict(SimpleNamespace(module=model))),
                          (resnet, load_file(tmp_path / "resnet.safetensors"))):
        assert state.keys() == module.state_dict().keys()
        assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())


def test_reading_weights_of_other_models(tmp_path):
    state = create_model("resnet18", num_classes=10).state_dict()
    torch.save(state, tmp_path / "resnet.pth")
    assert read_weights(tmp_path / "resnet.pth", mixer=False).keys() == state.keys()
    (tmp_path / "vit.npz").write_bytes(b"")
    with pytest.raises(WeightsError) as info:
        read_weights(tmp_path / "vit.npz", mixer=False)
    assert str(info.value) == (f"{tmp_path / 'vit.npz'}: .npz weights are read as official MLP-Mixer checkpoints "
                               "only; for this model give a .safetensors or .pth state dict")


@pytest.mark.parametrize("stem, name", [("deit_s", "deit_small_patch16_224"), ("convit_s", "convit_small")])
def test_deit_recipe_configs_hold_their_arithmetic(stem, name):
    cfg = load_config(f"configs/{stem}.yaml", PretrainConfig)
    length = resolve_run_length(cfg, 1_281_167, 1_281_167)  # ImageNet-1k's training images
    assert (cfg.model.name, cfg.train.epochs, cfg.schedule.warmup_epochs) == (name, 300, 5)
    assert (length.steps, length.warmup_steps) == (375_342, 6_256)  # 300 x 1281167 / 1024, rounded up
    assert cfg.optim.lr == pytest.approx(5e-4 * cfg.train.global_batch / 512)
    assert (cfg.optim.weight_decay, cfg.optim.grad_clip, cfg.model.drop_path_rate) == (0.05, 0.0, 0.1)
    assert (cfg.augment.mixup, cfg.augment.cutmix, cfg.augment.label_smoothing, cfg.augment.random_erasing) == (
        0.8, 1.0, 0.1, 0.25)
