"""RandAugment on the TF/big_vision scale: the configured magnitude is the one applied to the image (m20 rotates by
60 degrees, not timm's clipped 30), a magnitude that would be clipped is a one-line config error (exit 2), and
posterize runs at every magnitude under Pillow 13."""

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from launch.cli import USAGE_EXIT, run_main
from pretrain.config import ConfigError, PretrainConfig, load_config
from pretrain.data import train_transform
from pretrain.data.randaugment import parse_randaugment, posterize, rand_augment, randaugment_problem

ROOT = Path(__file__).parent.parent
MID_GREY = (0.5, 0.5, 0.5)


def ops_of(config: str, size: int = 64) -> dict:
    return {op.name: op for op in rand_augment(config, size, MID_GREY, "bilinear").ops}


def photo(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def applied_args(op, img: Image.Image) -> tuple:
    """The arguments `op` hands its image function (the applied amounts), and checks that it ran."""
    calls = []
    real = op.aug_fn
    op.aug_fn = lambda image, *args, **kwargs: calls.append(args) or real(image, *args, **kwargs)
    try:
        op(img)
    finally:
        op.aug_fn = real
    assert len(calls) == 1, f"{op.name} was not applied"
    return calls[0]


# What TF's distort_image_with_randaugment applies at magnitude m (big_vision pp/autoaugment.py), per op.
def tf_amounts(m: float) -> dict[str, float]:
    return {"Rotate": 30 * m / 10, "ShearX": 0.3 * m / 10, "TranslateXRel": 0.45 * m / 10,
            "SolarizeAdd": int(110 * m / 10), "Color": 1.8 * m / 10 + 0.1, "Posterize": int(4 * m / 10)}


@pytest.mark.parametrize("m", [5, 10, 15, 20])
def test_the_applied_amount_is_the_tf_amount_of_the_configured_magnitude(m):
    ops = ops_of(f"rand-m{m}-n2-p1.0")
    random.seed(0)
    for name, want in tf_amounts(m).items():
        (got,) = applied_args(ops[name], photo(0))
        assert abs(got) == pytest.approx(want), (name, got, want)


def test_m20_rotates_the_image_by_60_degrees():
    rotate = ops_of("rand-m20-n2-p1.0")["Rotate"]
    img = photo(1)
    for seed in range(6):
        random.seed(seed)
        out = np.asarray(rotate(img))
        by = [np.asarray(img.rotate(a, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))
              for a in (60, -60)]
        assert any(np.array_equal(out, b) for b in by), seed


def test_magnitude_noise_is_not_capped_at_10_on_the_tf_scale():
    rotate = ops_of("rand-m10-n2-p1.0-mstd2")["Rotate"]
    random.seed(0)
    angles = [abs(applied_args(rotate, photo(0))[0]) for _ in range(200)]
    assert max(angles) > 33  # magnitude draws above 10 are applied (timm would clip them to 10: 30 degrees)
    inc = ops_of("rand-m9-n2-p1.0-mstd2-inc1")["Rotate"]  # the increasing ops end at 10, as timm's
    assert max(abs(applied_args(inc, photo(0))[0]) for _ in range(200)) == pytest.approx(30)


@pytest.mark.parametrize("config, message", [
    ("rand-m20-n2-mmax10", "randaugment 'rand-m20-n2-mmax10': magnitude 20 would be clipped to 10 by mmax10; raise "
                           "mmax to at least 20 or drop it (no ceiling on the TF scale)"),
    ("rand-m12-inc1", "randaugment 'rand-m12-inc1': magnitude 12 would be clipped to 10: the increasing ops (inc1) "
                      "reach their strongest setting at 10; use m <= 10, or drop inc1 for the TF/big_vision ops, "
                      "where m > 10 goes past each op's range (the Mixer paper's m15, m20)"),
    ("rand-m9-t3a", "bad randaugment string 'rand-m9-t3a': unknown section 't3a' (known: mN, nN, pN, mstdN, mmaxN, "
                    "incN)"),
    ("rand-m9-p1.5", "bad randaugment string 'rand-m9-p1.5': p must be a probability in [0, 1], got 1.5"),
])
def test_a_magnitude_that_would_be_clipped_is_a_config_error(tmp_path, config, message, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PretrainConfig, [f"augment.randaugment={config}"])
    assert str(info.value) == f"`augment.randaugment`: {message}"
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]") + "$"):
        train_transform(32, randaugment=config)

    def main(argv):  # what launch/pretrain.py does first
        load_config(path, PretrainConfig, [f"augment.randaugment={config}"])
        return 0

    assert run_main(main, []) == USAGE_EXIT
    assert capsys.readouterr().err == f"error: `augment.randaugment`: {message}\n"


def test_the_limits_themselves_are_allowed():
    for config in ("rand-m10-inc1", "rand-m20-mmax20", "rand-m30-n2", "rand-m9-mstd0.5-inc1", "rand-m0"):
        assert randaugment_problem(config) is None, config
    spec = parse_randaugment("rand-m20-n3-p1.0-mstd101")
    assert (spec.magnitude, spec.num_layers, spec.prob, spec.magnitude_std, spec.ceiling) == (
        20, 3, 1.0, float("inf"), float("inf"))


def test_posterize_keeps_the_high_bits_for_0_to_8_bits_and_never_raises():
    for seed in range(4):
        img = photo(seed, 16)
        px = np.asarray(img)
        assert not np.asarray(posterize(img, 0)).any()  # TF / Pillow < 13: black
        for bits in range(1, 8):
            assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
        assert posterize(img, 8) is img and posterize(img, 9) is img
        assert np.array_equal(np.asarray(posterize(img, 4)), px & 0xF0)
    with pytest.raises(ValueError, match=r"^posterize: cannot keep -1 bits$"):
        posterize(photo(0, 4), -1)


@pytest.mark.parametrize("config, name", [("rand-m{}-n2-p1.0-mstd0.5", "Posterize"),
                                          ("rand-m{}-n2-p1.0-mstd0.5-inc1", "PosterizeIncreasing")])
def test_posterize_runs_over_every_magnitude_and_many_images(config, name):
    random.seed(0)
    top = 10 if "inc1" in config else 25
    for m in range(top + 1):
        op = ops_of(config.format(m), 16)[name]
        for seed in range(8):
            out = op(photo(seed, 16))
            assert out.size == (16, 16)
    at_m20 = ops_of("rand-m20-n2-p1.0", 16)["Posterize"]  # TF: int(4 * 20 / 10) = 8 bits, the image itself
    img = photo(3, 16)
    assert at_m20(img) is img


def test_the_whole_randaugment_at_m20_runs_on_many_images():
    t = train_transform(48, randaugment="rand-m20-n2-p1.0")
    random.seed(0)
    np.random.seed(0)
    for seed in range(60):
        out = t(photo(seed, 64))
        assert tuple(out.shape) == (3, 48, 48)


@pytest.mark.parametrize("name, m", [("mixer_l16", 20), ("mixer_l32", 20), ("mixer_h14", 20), ("mixer_b16", 10),
                                     ("mixer_b16_in1k_scratch", 15)])
def test_the_paper_configs_apply_their_magnitude(name, m):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", PretrainConfig)
    a = cfg.augment
    t = train_transform(cfg.model.img_size, scale=a.scale, ratio=a.ratio, hflip=a.hflip, randaugment=a.randaugment,
                        random_erasing=a.random_erasing, mean=a.mean, std=a.std)
    rotate = next(op for op in t.randaugment.ops if op.name == "Rotate")
    random.seed(0)
    assert abs(applied_args(rotate, photo(0))[0]) == pytest.approx(3 * m)
