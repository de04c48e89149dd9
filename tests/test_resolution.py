"""Block-diagonal token-mixing expansion (MLP-Mixer Appendix C): exact per-part behaviour and errors."""

from __future__ import annotations

import einops
import pytest
import torch

from finetune.resolution import (
    ResolutionError,
    convert_for_model,
    expand_token_mixing,
    scale_factors,
)
from tests.helpers_finetune import make_mixer

PATCH = 4


def expanded_pair(old_size, new_size, seed=0):
    """A pretrained model at ``old_size`` and a model built at ``new_size``, widened and loaded with them."""
    old = make_mixer(img_size=old_size, patch_size=PATCH, seed=seed)
    new = make_mixer(img_size=new_size, patch_size=PATCH, seed=seed + 1)
    converted = convert_for_model(new, old.state_dict(), img_size_pretrained=old_size, img_size=new_size)
    new.load_state_dict(converted)
    return old, new


def part_major_positions(old_grid, factors):
    """For each row-major token of the new grid, its index in the part-major order (built with loops)."""
    h, w = old_grid
    kh, kw = factors
    positions = []
    for r in range(kh * h):
        for c in range(kw * w):
            part = (r // h) * kw + c // w
            positions.append(part * h * w + (r % h) * w + c % w)
    return torch.tensor(positions)


def test_same_grid_is_the_identity():
    model = make_mixer(img_size=16)
    state = model.state_dict()
    expanded = expand_token_mixing(state, (4, 4), (4, 4))
    assert expanded.keys() == state.keys()
    assert all(torch.equal(expanded[k], state[k]) for k in state)
    other = make_mixer(img_size=16, seed=5)
    other.load_state_dict(expanded)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("old_grid,factors", [((4, 4), (2, 2)), ((2, 3), (2, 3)), ((3, 2), (1, 2))])
def test_expanded_weights_are_permuted_block_diagonal(old_grid, factors):
    """W1' = blockdiag(W1..)[:, P], W2' = blockdiag(W2..)[P, :], b2' = tile(b2)[P]; P from plain loops."""
    tokens, hidden, k = old_grid[0] * old_grid[1], 5, factors[0] * factors[1]
    w1, b1 = torch.randn(hidden, tokens), torch.randn(hidden)
    w2, b2 = torch.randn(tokens, hidden), torch.randn(tokens)
    state = {
        "blocks.3.mlp_tokens.fc1.weight": w1,
        "blocks.3.mlp_tokens.fc1.bias": b1,
        "blocks.3.mlp_tokens.fc2.weight": w2,
        "blocks.3.mlp_tokens.fc2.bias": b2,
        "blocks.3.mlp_channels.fc1.weight": torch.randn(7, 3),
    }
    new_grid = (old_grid[0] * factors[0], old_grid[1] * factors[1])
    out = expand_token_mixing(state, old_grid, new_grid)
    pos = part_major_positions(old_grid, factors)
    assert torch.equal(out["blocks.3.mlp_tokens.fc1.weight"], torch.block_diag(*[w1] * k)[:, pos])
    assert torch.equal(out["blocks.3.mlp_tokens.fc1.bias"], b1.repeat(k))
    assert torch.equal(out["blocks.3.mlp_tokens.fc2.weight"], torch.block_diag(*[w2] * k)[pos, :])
    assert torch.equal(out["blocks.3.mlp_tokens.fc2.bias"], b2.repeat(k)[pos])
    assert out["blocks.3.mlp_channels.fc1.weight"] is state["blocks.3.mlp_channels.fc1.weight"]


def test_expanded_token_mlp_mixes_each_part_independently():
    """The K=2 token-mixing MLP on a 2x2 tiling of parts equals the original MLP on each part, placed back."""
    old, new = expanded_pair((16, 16), (32, 32))
    parts = torch.randn(3, 32, 4, 4, 4)  # (batch, channels, part, row, col) for the 4x4 pretrained grid
    tiled = einops.rearrange(parts, "b c (P Q) i j -> b c (P i Q j)", P=2)
    # our token-mixing MLP takes the (B, N, C) layout
    expected = old.blocks[0].mlp_tokens(einops.rearrange(parts, "b c k i j -> (b k) (i j) c"))
    expected = einops.rearrange(expected, "(b P Q) (i j) c -> b c (P i Q j)", P=2, Q=2, i=4)
    got = new.blocks[0].mlp_tokens(tiled.transpose(1, 2)).transpose(1, 2)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("old_size,factors", [((16, 16), (2, 2)), ((8, 12), (2, 3))])
def test_expanded_model_is_the_pretrained_model_per_part(old_size, factors):
    """Per-token features equal the pretrained features of each part; pre-logits are their mean."""
    kh, kw = factors
    new_size = (old_size[0] * kh, old_size[1] * kw)
    old, new = expanded_pair(old_size, new_size)
    images = torch.randn(2, kh * kw, 3, *old_size)  # kh*kw different images per sample
    tiled = einops.rearrange(images, "b (P Q) ch y x -> b ch (P y) (Q x)", P=kh)
    with torch.no_grad():
        part_features = old.forward_features(einops.rearrange(images, "b k ch y x -> (b k) ch y x"))
        features = new.forward_features(tiled)
        part_pre_logits = old.forward_head(part_features, pre_logits=True)
        pre_logits = new.forward_head(features, pre_logits=True)
    h = old_size[0] // PATCH
    expected = einops.rearrange(part_features, "(b P Q) (i j) d -> b (P i Q j) d", P=kh, Q=kw, i=h)
    assert (features - expected).abs().max() < 1e-5
    expected_pre_logits = einops.reduce(part_pre_logits, "(b k) d -> b d", "mean", k=kh * kw)
    assert (pre_logits - expected_pre_logits).abs().max() < 1e-5


def test_convert_for_model_reads_square_grids_from_shapes():
    old = make_mixer(img_size=16)
    new = make_mixer(img_size=48, seed=1)
    new.load_state_dict(convert_for_model(new, old.state_dict()))
    assert new.blocks[1].mlp_tokens.fc1.weight.shape == (9 * 16, 9 * 16)
    assert torch.equal(
        new.blocks[1].mlp_tokens.fc1.weight[:16, :4], old.blocks[1].mlp_tokens.fc1.weight[:, :4]
    )


def test_convert_for_model_needs_sizes_for_non_square_grids():
    old = make_mixer(img_size=(8, 12))
    new = make_mixer(img_size=(16, 36), seed=1)
    with pytest.raises(ResolutionError) as info:
        convert_for_model(new, old.state_dict())
    assert (
        str(info.value)
        == "the pretrained checkpoint has 6 tokens, not a square grid; give its image size explicitly"
    )
    with pytest.raises(ResolutionError) as info:
        convert_for_model(new, old.state_dict(), img_size_pretrained=(8, 8))
    assert str(info.value) == (
        "the pretrained checkpoint: image size 8x8 with patch 4x4 gives grid 2x2 (4 tokens), but its "
        "token-mixing weights are for 6 tokens"
    )
    converted = convert_for_model(new, old.state_dict(), img_size_pretrained=(8, 12), img_size=(16, 36))
    new.load_state_dict(converted)


def test_non_integer_ratio_names_grids_sizes_and_valid_sizes():
    state = make_mixer(img_size=16).state_dict()
    with pytest.raises(ResolutionError) as info:
        expand_token_mixing(state, (4, 4), (6, 6))
    assert str(info.value) == (
        "cannot expand token mixing from grid 4x4 (image 16x16) to grid 6x6 (image 24x24, patch 4x4): "
        "each side of the new image must be an integer multiple of the pretrained one, e.g. 16x16, "
        "32x32, 48x48 (the two sides may use different multiples)"
    )


def test_smaller_grid_is_refused():
    with pytest.raises(
        ResolutionError,
        match=r"^cannot expand token mixing from grid 14x14 \(image 224x224\) to "
        r"grid 7x14 \(image 112x224, patch 16x16\)",
    ):
        scale_factors((14, 14), (7, 14), (16, 16))
    assert scale_factors((14, 14), (28, 42), (16, 16)) == (2, 3)
