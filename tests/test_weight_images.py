"""Weight pictures: sizes, pixel placement of each unit's weights, PNG output."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from pretrain.telemetry.weight_images import (
    PANEL_GAP,
    TILE_GAP,
    normalize_symmetric,
    save_png,
    stem_filters_image,
    token_mixing_image,
)


@pytest.fixture(scope="module")
def mixer():
    torch.manual_seed(0)
    # 32 px / 8 px patches: a 4x4 grid of 16 tokens, 12 token-mixing units, 24 stem filters.
    return timm.models.mlp_mixer.MlpMixer(
        num_classes=10, img_size=32, patch_size=8, num_blocks=3, embed_dim=24
    )


def _normalised(weight_row):
    return (weight_row / weight_row.abs().max() + 1) / 2


def test_normalize_symmetric_keeps_zero_at_grey():
    units = torch.tensor([[-2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.25, -0.125]])
    assert normalize_symmetric(units).tolist() == [[0.0, 0.75, 0.5], [0.5, 0.5, 0.5], [1.0, 0.75, 0.375]]


def test_token_mixing_image_places_every_unit_on_the_patch_grid(mixer):
    image = token_mixing_image(mixer, blocks=(0, 1))
    # 12 units in 4 columns x 3 rows of 4x4 tiles with 1 px gaps: 14 x 19 per panel; two panels 4 px apart.
    assert image.shape == (1, 14, 19 + PANEL_GAP + 19)
    step = 4 + TILE_GAP
    for block in (0, 1):
        weight = mixer.blocks[block].mlp_tokens.fc1.weight.detach()
        x0 = block * (19 + PANEL_GAP)
        for unit in (0, 5, 11):
            row, col = divmod(unit, 4)
            expected = _normalised(weight[unit])
            for i, j in [(0, 0), (1, 3), (3, 2)]:
                pixel = image[0, row * step + i, x0 + col * step + j]
                assert pixel == pytest.approx(expected[i * 4 + j].item(), abs=1e-6)
    assert image[0, 4, 0] == 1.0 and image[0, 0, 19] == 1.0  # white gaps between tiles and panels
    assert image.min() >= 0 and image.max() <= 1


def test_max_units_and_block_choice(mixer):
    image = token_mixing_image(mixer, blocks=(2,), max_units=5)  # 3 columns x 2 rows
    assert image.shape == (1, 2 * 5 - 1, 3 * 5 - 1)
    unit4 = _normalised(mixer.blocks[2].mlp_tokens.fc1.weight.detach()[4])
    assert image[0, 5 + 2, 5 + 1] == pytest.approx(unit4[2 * 4 + 1].item(), abs=1e-6)


class _Block(nn.Module):
    def __init__(self, tokens: int, units: int) -> None:
        super().__init__()
        self.mlp_tokens = nn.Module()
        self.mlp_tokens.fc1 = nn.Linear(tokens, units)


class _Mixer(nn.Module):
    """Just the names the pictures need: 4 token-mixing units over `tokens` tokens, maybe a grid_size."""

    def __init__(self, tokens: int = 6, grid: tuple[int, int] | None = (2, 3)) -> None:
        super().__init__()
        if grid is not None:
            self.grid_size = grid
        self.blocks = nn.ModuleList([_Block(tokens, 4)])


def test_non_square_grid_found_under_a_wrapper_prefix():
    inner = _Mixer()
    image = token_mixing_image(inner, blocks=(0,))
    assert image.shape == (1, 2 * 3 - 1, 2 * 4 - 1)  # 4 units: 2 columns x 2 rows of 2x3 tiles
    weight = inner.blocks[0].mlp_tokens.fc1.weight.detach()
    assert image[0, 3 + 1, 4 + 2] == pytest.approx(_normalised(weight[3])[1 * 3 + 2].item(), abs=1e-6)
    wrapper = nn.Module()  # like DeepSpeed's engine: parameters named module.blocks.0...
    wrapper.module = inner
    assert torch.equal(token_mixing_image(wrapper, blocks=(0,)), image)


def test_square_grid_is_inferred_without_grid_size():
    image = token_mixing_image(_Mixer(tokens=9, grid=None), blocks=(0,))
    assert image.shape == (1, 2 * 4 - 1, 2 * 4 - 1)  # 3x3 tiles


def test_missing_parameters_and_impossible_grids_are_named():
    with pytest.raises(ValueError, match=r"^model has no parameter 'blocks.5.mlp_tokens.fc1.weight'$"):
        token_mixing_image(_Mixer(), blocks=(5,))
    with pytest.raises(ValueError, match=r"^cannot lay 6 tokens on a 2x2 patch grid$"):
        token_mixing_image(_Mixer(grid=None), blocks=(0,))
    with pytest.raises(ValueError, match=r"^model has no parameter 'stem.proj.weight'$"):
        stem_filters_image(_Mixer())


def test_stem_filters_are_rgb_tiles(mixer):
    image = stem_filters_image(mixer)
    assert image.shape == (3, 5 * 9 - 1, 5 * 9 - 1)  # 24 filters of 8x8 in 5 columns
    weight = mixer.stem.proj.weight.detach()
    filt = 7
    row, col = divmod(filt, 5)
    expected = (weight[filt] / weight[filt].abs().max() + 1) / 2
    assert torch.allclose(image[:, row * 9 : row * 9 + 8, col * 9 : col * 9 + 8], expected, atol=1e-6)


def test_save_png_writes_decodable_images_atomically(tmp_path, mixer):
    gray = token_mixing_image(mixer)
    path = tmp_path / "figs" / "token_mixing.png"
    save_png(gray, path)
    save_png(gray, path)  # replacing an existing file
    with Image.open(path) as png:
        assert (png.mode, png.size) == ("L", (gray.shape[2], gray.shape[1]))
        assert np.array_equal(np.asarray(png), (gray[0] * 255).round().to(torch.uint8).numpy())
    rgb = stem_filters_image(mixer)
    save_png(rgb, tmp_path / "stem.png", scale=3)
    with Image.open(tmp_path / "stem.png") as png:
        assert (png.mode, png.size) == ("RGB", (3 * rgb.shape[2], 3 * rgb.shape[1]))
        pixel = (rgb[:, 1, 2] * 255).round().to(torch.uint8).tolist()
        assert list(png.getpixel((3 * 2 + 2, 3 * 1 + 1))) == pixel
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figs", "stem.png", "token_mixing.png"]


def test_save_png_refuses_bad_shapes(tmp_path):
    with pytest.raises(ValueError) as err:
        save_png(torch.zeros(2, 3, 3), tmp_path / "x.png")
    assert str(err.value) == "need a (H, W) or (1|3, H, W) image, scale >= 1; got (2, 3, 3), 1"
