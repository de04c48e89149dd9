"""Fine-tune init of timm models: position embeddings resampled as timm does, classifier dropped and zeroed,
convolutional models loaded unchanged at any resolution, one-line errors."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from timm.layers import resample_abs_pos_embed

from finetune.head import classifier_keys
from finetune.init import BackboneInitReport, InitError, load_init
from pretrain.models import create_model


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    return create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4).eval()


@pytest.fixture(scope="module")
def convit():
    torch.manual_seed(0)
    return create_model("convit_tiny", num_classes=10, img_size=32, patch_size=4).eval()


@pytest.mark.parametrize("name, prefix_tokens", [("deit", 1), ("convit", 0)])
def test_larger_image_resamples_pos_embed_and_drops_the_head(request, name, prefix_tokens):
    pretrained = request.getfixturevalue(name)
    model = create_model(pretrained.default_cfg["architecture"], num_classes=5, img_size=64, patch_size=4)
    report = load_init(model, pretrained.state_dict())
    assert report == BackboneInitReport("<state dict>", ((8, 8), (16, 16)), head_dropped=True)
    expected = resample_abs_pos_embed(pretrained.pos_embed.detach(), [16, 16], num_prefix_tokens=prefix_tokens)
    assert model.pos_embed.shape[1] == 256 + prefix_tokens
    assert torch.equal(model.pos_embed.detach(), expected)
    assert not model.head.weight.any() and not model.head.bias.any() and model.head.out_features == 5
    ours, theirs = model.state_dict(), pretrained.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k not in ("pos_embed", "head.weight", "head.bias"))


def test_same_classes_keep_the_head_and_load_exactly(tmp_path, deit):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in deit.state_dict().items()}, path)
    model = create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    assert load_init(model, path, drop_head=False) == BackboneInitReport(str(path), None, head_dropped=False)
    ours, theirs = model.state_dict(), deit.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_other_class_count_without_drop_head_is_an_error(deit):
    model = create_model("deit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=4)
    with pytest.raises(InitError) as info:
        load_init(model, deit.state_dict(), drop_head=False)
    assert str(info.value) == ("the init state dict has a 10-class head but the model has 5 classes; "
                               "use drop_head=True to start from a zero head")


def test_misfits_are_one_line(deit):
    other_patch = create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8)
    with pytest.raises(InitError) as info:
        load_init(other_patch, deit.state_dict())
    assert str(info.value) == ("the init state dict does not fit the model: patch_embed.proj.weight has shape "
                               "(192, 3, 4, 4) in the checkpoint but (192, 3, 8, 8) in the model")
    state = {k: v for k, v in deit.state_dict().items() if k != "norm.bias"}
    state["extra.weight"] = torch.zeros(1)
    model = create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    with pytest.raises(InitError) as info:
        load_init(model, state)
    assert str(info.value) == ("the init state dict does not fit the model: 1 missing entries ['norm.bias'], "
                               "1 unexpected entries ['extra.weight']")


def test_resnet_loads_unchanged_at_another_resolution_from_a_pth(tmp_path):
    torch.manual_seed(0)
    pretrained = create_model("resnet18", num_classes=10, img_size=32)
    torch.save(pretrained.state_dict(), tmp_path / "resnet.pth")
    model = create_model("resnet18", num_classes=7, img_size=96)
    assert classifier_keys(model) == ["fc.weight", "fc.bias"]
    report = load_init(model, tmp_path / "resnet.pth")
    assert report == BackboneInitReport(str(tmp_path / "resnet.pth"), None, head_dropped=True)
    ours, theirs = model.state_dict(), pretrained.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if not k.startswith("fc."))
    assert not model.fc.weight.any() and model(torch.randn(1, 3, 96, 96)).abs().max() == 0


def test_a_headless_model_drops_the_checkpoint_head_as_a_mixer_does(deit):
    model = create_model("deit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4)
    assert classifier_keys(model) == []
    report = load_init(model, deit.state_dict())
    assert report == BackboneInitReport("<state dict>", None, head_dropped=True)
    ours, theirs = model.state_dict(), deit.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
