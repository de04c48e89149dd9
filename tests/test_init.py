"""Loading an init checkpoint for fine-tuning: file kinds, resolution expansion, head handling, errors."""

from __future__ import annotations

import argparse

import einops
import pytest
import safetensors.torch
import torch

from finetune.init import InitError, InitReport, load_init, read_state_dict
from finetune.resolution import ResolutionError
from tests.helpers_finetune import make_mixer


@pytest.fixture(scope="module")
def pretrained():
    return make_mixer(num_classes=10, img_size=16, seed=0)


def save(state, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["run_dir", "safetensors", "pth", "wrapped_pth", "ddp_bin"])
def test_every_file_kind_reads_back_the_same_tensors(tmp_path, pretrained, kind):
    state = pretrained.state_dict()
    if kind == "run_dir":
        (tmp_path / "run").mkdir()
        save(state, tmp_path / "run" / "final.safetensors")
        path = tmp_path / "run"
    elif kind == "safetensors":
        path = save(state, tmp_path / "w.safetensors")
    elif kind == "pth":
        path = save(state, tmp_path / "w.pth")
    elif kind == "wrapped_pth":
        # As timm's train.py saves it, with the argparse namespace.
        train_checkpoint = {"state_dict": state, "epoch": 3, "args": argparse.Namespace(lr=0.1)}
        path = save(train_checkpoint, tmp_path / "w.pth")
    else:
        path = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "w.bin")
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_higher_resolution_init_is_the_pretrained_model_per_part(tmp_path, pretrained):
    path = save(pretrained.state_dict(), tmp_path / "w.safetensors")
    model = make_mixer(num_classes=5, img_size=32, seed=1)
    report = load_init(model, path, img_size_pretrained=16)
    assert report == InitReport(str(path), (4, 4), (8, 8), (2, 2), head_dropped=True)
    assert model.blocks[0].mlp_tokens.fc1.weight.shape == (4 * 16, 64)
    assert not model.head.weight.any() and not model.head.bias.any() and model.head.out_features == 5
    parts = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        pre_logits = model.forward_head(
            model.forward_features(einops.rearrange(parts, "b (P Q) c y x -> b c (P y) (Q x)", P=2)),
            pre_logits=True,
        )
        part_pre_logits = pretrained.forward_head(
            pretrained.forward_features(einops.rearrange(parts, "b k c y x -> (b k) c y x")), pre_logits=True
        )
    expected = einops.reduce(part_pre_logits, "(b k) d -> b d", "mean", k=4)
    assert (pre_logits - expected).abs().max() < 1e-5


def test_same_resolution_and_classes_loads_everything(pretrained):
    model = make_mixer(num_classes=10, img_size=16, seed=1)
    report = load_init(model, pretrained.state_dict())
    assert report == InitReport("<state dict>", (4, 4), (4, 4), (1, 1), head_dropped=False)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), pretrained(x))


def test_reloading_a_fine_tuned_expanded_checkpoint_widens_a_fresh_model(pretrained):
    tuned = make_mixer(num_classes=5, img_size=32, seed=1)
    load_init(tuned, pretrained.state_dict())
    fresh = make_mixer(num_classes=5, img_size=32, seed=2)
    report = load_init(fresh, tuned.state_dict(), drop_head=False)
    assert report.factors == (1, 1) and not report.head_dropped
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.forward_features(x), tuned.forward_features(x))


def test_class_count_mismatch_without_drop_head(pretrained):
    model = make_mixer(num_classes=5, img_size=16, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitError) as info:
        load_init(model, pretrained.state_dict(), drop_head=False)
    assert str(info.value) == (
        "the init state dict has a 10-class head but the model has 5 classes; use drop_head=True to start "
        "from a zero head"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_not_a_mixer_checkpoint(tmp_path):
    path = save(
        {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, tmp_path / "r.pth"
    )
    with pytest.raises(InitError) as info:
        load_init(make_mixer(), path)
    assert str(info.value) == f"{path}: not an MLP-Mixer checkpoint (no 'stem.proj.weight' among its 2 keys)"
    with pytest.raises(ResolutionError) as info:  # the same check on a state dict passed directly
        load_init(make_mixer(), {"fc.weight": torch.zeros(10, 4)})
    assert str(info.value) == (
        "the init state dict is not an MLP-Mixer state dict: it has no stem.proj.weight or "
        "blocks.0.mlp_tokens.fc1.weight")


def test_unexpandable_resolution(pretrained):
    model = make_mixer(img_size=24, seed=1)
    with pytest.raises(
        ResolutionError, match=r"^cannot expand token mixing from grid 4x4 \(image 16x16\) to "
    ):
        load_init(model, pretrained.state_dict())


def test_other_shape_mismatch_is_one_line(pretrained):
    model = make_mixer(img_size=16, embed_dim=48, seed=1)
    with pytest.raises(InitError) as info:
        load_init(model, pretrained.state_dict())
    assert str(info.value) == (
        "the init state dict does not fit the model: stem.proj.weight has shape (32, 3, 4, 4) in the "
        "checkpoint but (48, 3, 4, 4) in the model"
    )


def test_missing_and_unexpected_entries(pretrained):
    state = pretrained.state_dict()
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(InitError) as info:
        load_init(make_mixer(seed=1), state)
    assert str(info.value) == (
        "the init state dict does not fit the model: 1 missing entries ['norm.weight'], "
        "1 unexpected entries ['extra.weight']"
    )


def test_patch_size_change_is_refused(pretrained):
    with pytest.raises(ResolutionError) as info:
        load_init(make_mixer(img_size=16, patch_size=2, seed=1), pretrained.state_dict())
    assert str(info.value) == (
        "the init state dict has patch size 4x4 but the model 2x2; only the image size may change"
    )


@pytest.mark.parametrize(
    "name,message",
    [
        ("missing.safetensors", "weights file not found: {path}"),
        ("weights.npz", "{path}: cannot read weights: "),
        ("empty_run",
         "{path} holds no weights: expected final.safetensors, model.safetensors or a checkpoints/latest pointer"),
        ("garbage.pth", "{path}: cannot read weights: "),
    ],
)
def test_unreadable_sources(tmp_path, name, message):
    path = tmp_path / name
    if name == "empty_run":
        path.mkdir()
    elif name != "missing.safetensors":
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(InitError) as info:
        read_state_dict(path)
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value)


def test_a_headless_model_drops_the_checkpoint_head(pretrained):
    model = make_mixer(num_classes=0, img_size=16, seed=1)
    report = load_init(model, pretrained.state_dict())
    assert report.head_dropped
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), pretrained.forward_head(pretrained.forward_features(x), pre_logits=True))
