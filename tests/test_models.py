"""Tests for the MLP-Mixer model, its registry and its FLOP count."""

import math
from functools import partial

import pytest
import torch
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models import MlpMixer, create_model, list_models, mixer_flops_per_image
from pretrain.models.layers import DropPath, lecun_normal_
from tests.helpers_models import perturb_

PAPER_PARAMS_M = {
    "mixer_s32": 19,
    "mixer_s16": 18,
    "mixer_b32": 60,
    "mixer_b16": 59,
    "mixer_l32": 206,
    "mixer_l16": 207,
    "mixer_h14": 431,
}


def demo(**overrides) -> MlpMixer:
    torch.manual_seed(0)
    return create_model("mixer_demo", **overrides)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_counts_without_head_match_paper_table1(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=0)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == PAPER_PARAMS_M[name]


def test_registry_lists_variants_and_rejects_unknown_names():
    assert list_models() == [
        "mixer_b16",
        "mixer_b32",
        "mixer_demo",
        "mixer_h14",
        "mixer_l16",
        "mixer_l32",
        "mixer_s16",
        "mixer_s32",
    ]
    with pytest.raises(ValueError) as err:
        create_model("mixer_x1")
    assert str(err.value) == "unknown model 'mixer_x1'; closest: mixer_s16, mixer_l16, mixer_h14"


def test_registry_overrides_settings_but_not_widths():
    with torch.device("meta"):
        model = create_model("mixer_s32", img_size=64, num_classes=7, drop_path_rate=0.1, gelu="tanh")
    assert (model.img_size, model.grid_size, model.num_tokens, model.num_classes) == (64, (2, 2), 4, 7)
    with pytest.raises(ValueError, match="^cannot override embed_dim of mixer_s32; overridable: drop_path"):
        create_model("mixer_s32", embed_dim=64)


def test_demo_model_runs_at_32_and_64_pixels():
    small, large = demo(), demo(img_size=64)
    assert (small.grid_size, small.num_tokens, small.patch_size, small.num_features) == ((8, 8), 64, 4, 128)
    assert (large.grid_size, large.num_tokens) == ((16, 16), 256)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert large(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_forward_features_head_and_pre_logits():
    model = perturb_(demo()).eval()
    x = torch.randn(3, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 64, 128)
    pooled = model.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    torch.testing.assert_close(model(x), model.head(pooled))


def test_wrong_input_size_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="^input is 64x64 but the model was built for 32x32$"):
        demo()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="^img_size 30 is not a multiple of patch_size 4$"):
        demo(img_size=30)
    with pytest.raises(ValueError, match="^init must be one of \\['flax', 'timm'\\], got 'jax'$"):
        demo(init="jax")
    with pytest.raises(ValueError, match="^gelu must be one of \\['exact', 'tanh'\\], got 'fast'$"):
        demo(gelu="fast")


def test_matches_timm_with_exact_and_tanh_gelu():
    x = torch.randn(2, 3, 32, 32)
    for gelu, act in (("exact", nn.GELU), ("tanh", partial(nn.GELU, approximate="tanh"))):
        ours = perturb_(demo(gelu=gelu)).eval()
        timm = TimmMlpMixer(
            num_classes=10,
            img_size=32,
            patch_size=4,
            num_blocks=4,
            embed_dim=128,
            mlp_ratio=(0.5, 4.0),
            act_layer=act,
        ).eval()
        timm.load_state_dict(ours.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), timm(x), rtol=0, atol=1e-5)
    with torch.no_grad():
        exact = perturb_(demo(gelu="exact")).eval()(x)
        tanh = perturb_(demo(gelu="tanh")).eval()(x)
    assert 0 < (exact - tanh).abs().max() < 1e-2


def test_head_starts_at_zero_and_reset_classifier_gives_a_zero_head():
    model = perturb_(demo())
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.head.weight.shape == (3, 128)
    assert not model.head.weight.any() and not model.head.bias.any()
    assert not model(torch.randn(2, 3, 32, 32)).any()
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert not demo().head.weight.any()


def test_flax_init_is_lecun_normal_with_zero_biases():
    model = demo(init="flax")
    fc = model.blocks[0].mlp_channels.fc2  # 512 -> 128
    assert fc.weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.02)
    assert fc.weight.abs().max().item() <= 2 / math.sqrt(512) / 0.87962566103423978
    assert not fc.bias.any() and not model.blocks[0].mlp_tokens.fc1.bias.any()
    stem = model.stem.proj.weight  # fan_in 3 * 4 * 4
    assert stem.std().item() == pytest.approx(1 / math.sqrt(48), rel=0.05)
    assert not model.stem.proj.bias.any()
    assert torch.equal(model.norm.weight, torch.ones(128)) and not model.head.weight.any()
    weight = lecun_normal_(torch.empty(1024, 1024))
    assert weight.std().item() == pytest.approx(1 / 32, rel=0.01)
    assert weight.abs().max().item() == pytest.approx(2 / 32 / 0.87962566103423978, rel=0.01)


def test_timm_init_is_xavier_uniform_with_tiny_normal_biases():
    model = demo(init="timm")
    fc = model.blocks[0].mlp_channels.fc2
    bound = math.sqrt(6 / (512 + 128))
    assert fc.weight.abs().max().item() <= bound
    assert fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert 0 < fc.bias.abs().max().item() < 1e-5
    assert not model.stem.proj.bias.any() and not model.head.weight.any()


@pytest.mark.parametrize("init", ["flax", "timm"])
def test_parameters_are_final_when_their_layer_is_constructed(monkeypatch, init):
    # DeepSpeed zero.Init partitions a module's own parameters right after its __init__ returns; a later init
    # pass over the whole model would write into empty shards. Snapshot at that moment, compare at the end.
    snapshots = {}
    building = set()

    def recording(init_fn):
        def wrapped(self, *args, **kwargs):
            outermost = id(self) not in building
            building.add(id(self))
            init_fn(self, *args, **kwargs)
            if outermost:
                building.discard(id(self))
                for param in self.parameters(recurse=False):
                    snapshots[id(param)] = param.detach().clone()

        return wrapped

    for cls in (nn.Linear, nn.Conv2d, nn.LayerNorm):
        monkeypatch.setattr(cls, "__init__", recording(cls.__init__))
    model = demo(init=init)
    params = list(model.parameters())
    assert len(snapshots) == len(params) == 2 + 4 * 12 + 2 + 2
    for param in params:
        assert torch.equal(param, snapshots[id(param)])


def test_stochastic_depth_rate_rises_linearly_to_drop_path_rate():
    model = demo(drop_path_rate=0.3)
    assert [block.drop_path.drop_prob for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [block.drop_path.drop_prob for block in demo().blocks] == [0.0] * 4


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    drop = DropPath(0.25)
    out = drop(torch.ones(4000, 3, 5))
    per_sample = out[:, 0, 0]
    assert per_sample.unique().tolist() == [0.0, pytest.approx(4 / 3)]
    assert torch.equal(out, per_sample[:, None, None].expand_as(out))
    assert (per_sample == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    x = torch.randn(8, 3, 5)
    assert torch.equal(drop.eval()(x), x)


def test_dropout_is_active_only_in_training():
    model = perturb_(demo(drop_rate=0.5))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model.train()(x))
        assert torch.equal(model.eval()(x), model.eval()(x))


def test_grad_checkpointing_gives_equal_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = perturb_(demo())
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6, msg=name)


def test_flops_of_b16_match_a_hand_computation():
    tokens, dim, ds, dc = 196, 768, 384, 3072
    stem = 2 * tokens * dim * 3 * 16 * 16
    block = 2 * dim * (2 * tokens * ds) + 2 * tokens * (2 * dim * dc)
    head = 2 * dim * 1000
    expected = stem + 12 * block + head
    assert expected == 25_203_535_872
    assert mixer_flops_per_image("mixer_b16") == expected
    assert mixer_flops_per_image({"name": "mixer_b16"}) == expected
    with torch.device("meta"):
        headless = create_model("mixer_b16", num_classes=0)
    assert mixer_flops_per_image(headless) == expected - head


def test_flops_equal_torch_flop_counter_on_demo():
    for size in (32, 64):
        model = demo(img_size=size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.randn(3, 3, size, size))
        assert counter.get_total_flops() == 3 * mixer_flops_per_image(model)
        assert mixer_flops_per_image({"name": "mixer_demo", "img_size": size}) == mixer_flops_per_image(model)


def test_flops_config_needs_a_name():
    with pytest.raises(ValueError, match="^model config needs a 'name'"):
        mixer_flops_per_image({"img_size": 224})
