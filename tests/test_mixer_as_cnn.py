"""The paper's remark that Mixer is a CNN with special kernels, checked on random weights.

Channel mixing is a 1x1 convolution; token mixing is a depthwise convolution whose single kernel spans the
whole token grid ('valid' padding) and is shared by every channel; the stem is one linear map of flattened
patches.
"""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from pretrain.models import create_model
from tests.helpers_models import perturb_

GRID = 8  # mixer_demo at 32x32 with patch 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_(create_model("mixer_demo")).eval()


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randn(2, GRID * GRID, 128)


def to_image(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b (h w) c -> b c h w", h=GRID)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b c h w -> b (h w) c")


def test_channel_mixing_is_a_1x1_convolution(model, tokens):
    mlp = model.blocks[1].mlp_channels
    image = to_image(tokens)
    hidden = F.gelu(F.conv2d(image, mlp.fc1.weight[:, :, None, None], mlp.fc1.bias))
    out = F.conv2d(hidden, mlp.fc2.weight[:, :, None, None], mlp.fc2.bias)
    with torch.no_grad():
        torch.testing.assert_close(mlp(tokens), to_tokens(out))


def test_token_mixing_is_a_shared_depthwise_convolution_over_the_whole_grid(model, tokens):
    mlp = model.blocks[1].mlp_tokens
    channels, hidden_units = tokens.shape[-1], mlp.fc1.out_features
    image = to_image(tokens)
    # One GRID x GRID kernel per hidden unit, repeated for every channel (groups=channels: depthwise).
    kernels = rearrange(mlp.fc1.weight, "d (h w) -> d 1 h w", h=GRID).repeat(channels, 1, 1, 1)
    hidden = F.conv2d(image, kernels, mlp.fc1.bias.repeat(channels), groups=channels)  # 'valid': 1x1 output
    assert hidden.shape == (2, channels * hidden_units, 1, 1)
    hidden = F.gelu(hidden)
    # Back to the grid: the transposed depthwise convolution with the second layer's shared kernels.
    kernels_out = rearrange(mlp.fc2.weight, "(h w) d -> d 1 h w", h=GRID).repeat(channels, 1, 1, 1)
    out = F.conv_transpose2d(hidden, kernels_out, groups=channels) + to_image(mlp.fc2.bias[None, :, None])
    with torch.no_grad():
        torch.testing.assert_close(mlp(tokens), to_tokens(out))


def test_stem_is_a_linear_map_of_flattened_patches(model):
    image = torch.randn(2, 3, 32, 32)
    patches = rearrange(image, "b c (h p) (w q) -> b (h w) (c p q)", p=4, q=4)
    weight = rearrange(model.stem.proj.weight, "o c p q -> o (c p q)")
    with torch.no_grad():
        torch.testing.assert_close(model.stem(image), F.linear(patches, weight, model.stem.proj.bias))
