"""Tests for loading timm / official Flax Mixer checkpoints and saving safetensors."""

import numpy as np
import pytest
import timm
import torch
from einops import rearrange
from safetensors.torch import load_file

from pretrain.models import MlpMixer, WeightsError, create_model, load_weights, save_weights
from tests.helpers_models import perturb_, to_flax_layout


@pytest.fixture(scope="module")
def timm_b16(tmp_path_factory):
    """timm's mixer_b16_224, every weight moved off its init, saved in all three formats; input and logits."""
    torch.manual_seed(0)
    model = perturb_(timm.create_model("mixer_b16_224", pretrained=False)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
    root = tmp_path_factory.mktemp("b16")
    state = model.state_dict()
    torch.save(state, root / "b16.pth")
    save_weights(model, root / "b16.safetensors")
    np.savez(root / "b16.npz", **to_flax_layout(state))
    return root, x, logits


@pytest.fixture(scope="module")
def ours_b16():
    """Our mixer_b16, built once; tests zero it before loading so a load that copies nothing shows."""
    return create_model("mixer_b16").eval()


def zeroed(model: MlpMixer) -> MlpMixer:
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model


def demo(**overrides) -> MlpMixer:
    torch.manual_seed(0)
    return create_model("mixer_demo", **overrides)


@pytest.mark.parametrize("name", ["b16.pth", "b16.safetensors", "b16.npz"])
def test_timm_b16_weights_give_timm_logits(timm_b16, ours_b16, name):
    root, x, logits = timm_b16
    model = zeroed(ours_b16)
    load_weights(model, root / name)
    with torch.no_grad():
        assert (model(x) - logits).abs().max().item() < 1e-4
    assert logits.abs().max().item() > 0.1  # a meaningful comparison: the head is not zero


def test_our_safetensors_load_into_timm_strictly(timm_b16, ours_b16, tmp_path):
    root, x, logits = timm_b16
    ours = zeroed(ours_b16)
    load_weights(ours, root / "b16.pth")
    save_weights(ours, tmp_path / "ours.safetensors")
    theirs = timm.create_model("mixer_b16_224", pretrained=False).eval()
    theirs.load_state_dict(load_file(tmp_path / "ours.safetensors"), strict=True)
    with torch.no_grad():
        assert (theirs(x) - logits).abs().max().item() < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["ours.safetensors"]  # no temporary file left


def test_flax_layout_is_hwio_stem_and_in_out_dense(tmp_path):
    # Independent of the test helper's conversion: apply the Flax arrays as Flax does and compare.
    model = perturb_(demo()).eval()
    arrays = to_flax_layout(model.state_dict())
    np.savez(tmp_path / "demo.npz", **arrays)
    loaded = demo()
    load_weights(loaded, tmp_path / "demo.npz")
    image = torch.randn(1, 3, 32, 32)
    patches = rearrange(image, "b c (h p) (w q) -> b (h w) p q c", p=4, q=4).numpy()
    tokens = np.einsum("bnpqc,pqco->bno", patches, arrays["stem/kernel"]) + arrays["stem/bias"]
    with torch.no_grad():
        np.testing.assert_allclose(loaded.stem(image).numpy(), tokens, atol=1e-5)
        hidden = torch.randn(5, 128)
        dense = hidden.numpy() @ arrays["MixerBlock_0/channel_mixing/Dense_0/kernel"]
        dense += arrays["MixerBlock_0/channel_mixing/Dense_0/bias"]
        np.testing.assert_allclose(loaded.blocks[0].mlp_channels.fc1(hidden).numpy(), dense, atol=1e-5)
        assert torch.equal(loaded(image), model(image))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_wrapped_and_prefixed_state_dicts_load(tmp_path, wrap):
    source = perturb_(demo())
    state = source.state_dict()
    payload = {f"module.{k}": v for k, v in state.items()} if wrap == "module." else {wrap: state, "epoch": 3}
    torch.save(payload, tmp_path / "ckpt.pt")
    model = demo()
    load_weights(model, tmp_path / "ckpt.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_class_count_mismatch_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "demo.safetensors"
    save_weights(perturb_(demo()), path)
    model = demo(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)
    assert str(err.value) == (
        f"{path}: shape mismatch for head.weight: checkpoint (10, 128), model (5, 128) "
        "(drop_head=True keeps the model's own head)"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_drop_head_loads_the_body_and_keeps_the_zero_head(tmp_path):
    path = tmp_path / "demo.safetensors"
    source = perturb_(demo())
    save_weights(source, path)
    model = demo(num_classes=5)
    load_weights(model, path, drop_head=True)
    assert not model.head.weight.any() and not model.head.bias.any()
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, source.state_dict()[key]), key


def test_wrong_variant_names_the_first_mismatching_key(tmp_path):
    path = tmp_path / "demo.safetensors"
    save_weights(demo(), path)
    with pytest.raises(WeightsError) as err:
        load_weights(demo(patch_size=8), path)
    assert str(err.value) == (
        f"{path}: shape mismatch for stem.proj.weight: checkpoint (128, 3, 4, 4), model (128, 3, 8, 8)"
    )


def test_missing_and_unexpected_keys_are_named(tmp_path):
    deep = demo()
    shallow = MlpMixer(10, 32, 3, 4, num_blocks=3, embed_dim=128, tokens_dim=64, channels_dim=512)
    save_weights(shallow, tmp_path / "shallow.safetensors")
    save_weights(deep, tmp_path / "deep.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(deep, tmp_path / "shallow.safetensors")
    assert str(err.value) == (
        f"{tmp_path / 'shallow.safetensors'}: checkpoint lacks 12 model key(s): blocks.3.norm1.weight, "
        "blocks.3.norm1.bias, blocks.3.mlp_tokens.fc1.weight, blocks.3.mlp_tokens.fc1.bias, "
        "blocks.3.mlp_tokens.fc2.weight ... (+7 more)"
    )
    with pytest.raises(WeightsError) as err:
        load_weights(shallow, tmp_path / "deep.safetensors")
    assert str(err.value) == (  # in the file's order; safetensors sorts its keys
        f"{tmp_path / 'deep.safetensors'}: checkpoint has 12 key(s) the model lacks: "
        "blocks.3.mlp_channels.fc1.bias, blocks.3.mlp_channels.fc1.weight, blocks.3.mlp_channels.fc2.bias, "
        "blocks.3.mlp_channels.fc2.weight, blocks.3.mlp_tokens.fc1.bias ... (+7 more)"
    )


def test_files_that_are_not_mixer_checkpoints_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    np.savez(tmp_path / "vit.npz", **{"embedding/kernel": np.zeros(3)})
    torch.save([1, 2], tmp_path / "list.pth")
    torch.save(demo(), tmp_path / "module.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "weights.onnx").write_bytes(b"")
    cases = {
        "resnet.pth": "not an MLP-Mixer checkpoint (no 'stem.proj.weight' among its 1 keys)",
        "vit.npz": "not an MLP-Mixer checkpoint (no 'stem/kernel' among its 1 arrays)",
        "list.pth": "not an MLP-Mixer checkpoint (no state dict of tensors)",
        "module.pth": "cannot read weights: it holds pickled objects, not just tensors "
        "(save model.state_dict(), or use save_weights)",
        "junk.safetensors": "cannot read weights: Error while deserializing header: ",
        "weights.onnx": "unknown weights format '.onnx' (expected .pth, .pt, .bin, .safetensors, .npz)",
    }
    for name, message in cases.items():
        with pytest.raises(WeightsError) as err:
            load_weights(demo(), tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {message}"), name
        assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="^weights file not found: "):
        load_weights(demo(), tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="^save_weights writes .safetensors files, got "):
        save_weights(demo(), tmp_path / "out.pth")
