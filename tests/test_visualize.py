"""Weight pictures from any Mixer checkpoint: the model is rebuilt from the weights' shapes, PNGs of the right size."""

import pytest
import torch
from PIL import Image

from launch.visualize import main
from pretrain.models import WeightsError, create_model, mixer_for_weights, save_weights
from pretrain.telemetry.weight_images import stem_filters_image, token_mixing_image


@pytest.mark.parametrize("name,overrides", [("mixer_demo", {"num_classes": 7}), ("mixer_s32", {"img_size": 64}),
                                            ("mixer_demo", {"num_classes": 0, "img_size": 64})])
def test_mixer_for_weights_fits_every_shape(name, overrides):
    state = create_model(name, **overrides).state_dict()
    rebuilt = mixer_for_weights(state)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    rebuilt.load_state_dict(state)


def test_visualize_writes_the_token_mixing_and_stem_pictures(tmp_path):
    torch.manual_seed(0)
    model = create_model("mixer_demo")
    save_weights(model, tmp_path / "w.safetensors")
    assert main(["--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "pics"),
                 "--scale", "3", "--max-units", "16"]) == 0
    tokens = Image.open(tmp_path / "pics" / "token_mixing.png")
    stem = Image.open(tmp_path / "pics" / "stem_filters.png")
    expected_tokens = token_mixing_image(model, max_units=16)
    expected_stem = stem_filters_image(model, max_units=16)
    assert (tokens.mode, tokens.size) == ("L", (expected_tokens.shape[2] * 3, expected_tokens.shape[1] * 3))
    assert (stem.mode, stem.size) == ("RGB", (expected_stem.shape[2] * 3, expected_stem.shape[1] * 3))
    pixel = round(expected_tokens[0, 0, 0].item() * 255)
    assert tokens.getpixel((0, 0)) == tokens.getpixel((2, 2)) == pixel  # each weight drawn as a 3x3 square


def test_mixer_for_weights_checks_a_given_image_size_against_the_tokens():
    state = create_model("mixer_demo").state_dict()  # 8x8 tokens of 4x4 patches
    assert mixer_for_weights(state, img_size=(16, 64)).grid_size == (4, 16)
    with pytest.raises(WeightsError, match=r"^the weights: image size 64x64 with patch 4x4 gives grid 16x16 "):
        mixer_for_weights(state, img_size=64)
