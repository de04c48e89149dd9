"""Transforms: equal to timm's under the same seeds, JPEG draft keeps the geometry, per-sample determinism,
the posterize guard, random erasing, device normalisation."""

import io
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import create_transform
from timm.data.auto_augment import rand_augment_transform

from pretrain.data import eval_transform, normalize_on_device, train_transform
from pretrain.data.randaugment import guard_posterize
from pretrain.data.rng import seed_globals
from tests.helpers_shards import encode, make_image


def photo_jpeg(size=(320, 240)) -> bytes:
    return encode(Image.fromarray(load_sample_images().images[0]).resize(size), quality=92)


def run(transform, data: bytes, seed: int) -> torch.Tensor:
    seed_globals(seed)
    img = Image.open(io.BytesIO(data))
    if not hasattr(transform, "decode"):  # timm's transform wants a decoded RGB image
        img = img.convert("RGB")
    return transform(img)


def timm_train(size, aa="rand-m9-mstd0.5", hflip=0.5):
    return create_transform(
        size,
        is_training=True,
        auto_augment=aa,
        interpolation="bilinear",
        hflip=hflip,
        color_jitter=None,
        mean=(0.5,) * 3,
        normalize=False,
    )


def test_train_transform_equals_timm_under_the_same_seeds_without_reduction():
    data = encode(make_image(3, (60, 44)), "PNG")  # PNG: no JPEG reduction
    ours, timms = train_transform(24, randaugment="rand-m9-mstd0.5"), timm_train(24)
    for seed in range(40):
        a, b = run(ours, data, seed), run(timms, data, seed)
        assert a.dtype == torch.uint8 and a.shape == (3, 24, 24)
        assert torch.equal(a, b), seed


def test_jpeg_reduction_keeps_the_crop_geometry():
    data = photo_jpeg()
    ours, timms = train_transform(48, hflip=0.0), timm_train(48, aa=None, hflip=0.0)
    reductions, diffs = [], []
    for seed in range(30):
        seed_globals(seed)
        _, (_, s) = ours.decode(Image.open(io.BytesIO(data)))
        reductions.append(s)
        a, b = run(ours, data, seed).float(), run(timms, data, seed).float()
        diffs.append((a - b).abs().mean().item())
    assert sum(s > 1 for s in reductions) >= 10  # big crops of a 320 x 240 photo decode at 1/2 or 1/4
    assert max(diffs) < 4.0  # same crop, only the downscaling differs: 1 to 3 levels on average


def test_train_transform_is_a_function_of_the_seed_and_pickles():
    data = photo_jpeg()
    t = train_transform(32, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.5)
    assert torch.equal(run(t, data, 7), run(t, data, 7))
    assert torch.equal(run(pickle.loads(pickle.dumps(t)), data, 7), run(t, data, 7))
    outs = [run(t, data, s) for s in range(6)]
    assert len({o.numpy().tobytes() for o in outs}) == 6


def test_eval_transform_equals_timm_and_reduces_large_jpegs():
    timms = create_transform(32, is_training=False, interpolation="bilinear", crop_pct=0.875, normalize=False)
    ours = eval_transform(32, crop_pct=0.875)
    png = encode(make_image(4, (70, 50)), "PNG")
    assert torch.equal(run(ours, png, 0), run(timms, png, 0))
    jpeg = photo_jpeg()
    _, (new_w, new_h, box) = ours.decode(Image.open(io.BytesIO(jpeg)))
    assert (new_w, new_h, box) == (48, 36, (0.0, 0.0, 320 / 4, 240 / 4))  # 1/4 still covers 48 x 36
    diff = (run(ours, jpeg, 0).float() - run(timms, jpeg, 0).float()).abs().mean().item()
    assert diff < 4.0


def posterize_op(transform):
    return next(op for op in transform.ops if op.name == "PosterizeIncreasing")


def test_posterize_guard_prevents_the_pillow_13_error():
    img = make_image(0, (8, 8))
    hparams = {"translate_const": 100, "img_mean": (128, 128, 128)}
    stock = posterize_op(rand_augment_transform("rand-m9-mstd0.5-inc1", dict(hparams)))
    random.seed(0)
    failures = 0
    for _ in range(2000):  # magnitude ~ N(9, 0.5) clipped at 10 gives 0 bits about 1 call in 90
        try:
            stock(img)
        except ValueError as e:
            assert str(e) == "bits must be between or equal to 1 and 8"
            failures += 1
    assert failures > 5  # the trap is real in this Pillow
    guarded = posterize_op(guard_posterize(rand_augment_transform("rand-m9-mstd0.5-inc1", dict(hparams))))
    random.seed(0)
    for _ in range(2000):
        guarded(img)
    t = train_transform(16, randaugment="rand-m9-mstd0.5-inc1")
    data = encode(make_image(1, (20, 20)), "PNG")
    for seed in range(300):
        run(t, data, seed)


def test_random_erasing_fills_a_region_with_clipped_noise():
    data = encode(Image.new("RGB", (40, 40), (0, 0, 0)), "PNG")
    t = train_transform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, random_erasing=1.0)
    out = run(t, data, 3)
    erased = (out != 0).any(dim=0)
    ys, xs = torch.nonzero(erased, as_tuple=True)
    box = erased[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.float().mean() > 0.4 and 0.02 * 1024 * 0.4 <= box.numel() <= 1024 / 3 + 64  # one noisy block
    assert torch.equal(out, run(t, data, 3))


def test_normalize_on_device():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = normalize_on_device(x, (0.5, 0.5, 0.2), (0.5, 0.5, 0.4), torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert y[0, :, 0, 0].float().tolist() == [-1.0, 1.0, 0.0]
    ref = (x.float() / 255 - torch.tensor([0.5, 0.5, 0.2]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.5, 0.4]
    ).view(1, 3, 1, 1)
    assert torch.allclose(normalize_on_device(x, (0.5, 0.5, 0.2), (0.5, 0.5, 0.4)), ref, atol=1e-6)
    with pytest.raises(TypeError, match="^normalize_on_device expects uint8 images, got torch.float32$"):
        normalize_on_device(x.float(), (0.5,) * 3, (0.5,) * 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^bad randaugment string 'rand-x9': "):
        train_transform(16, randaugment="rand-x9")
    with pytest.raises(ValueError, match=r"^unknown interpolation 'cubic'$"):
        train_transform(16, interpolation="cubic")
    with pytest.raises(ValueError, match=r"^crop_pct must be in \(0, 1\], got 1.5$"):
        eval_transform(16, crop_pct=1.5)
    assert np.isclose(eval_transform(224).resize_to, 256)
