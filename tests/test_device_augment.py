"""data.decode: device (pretrain/data/device_params.py, device_ops.py, device_augment.py), run on the CPU: each
RandAugment op against timm's PIL op on a real photo, the whole pipeline against the CPU path on the same draws,
the samples that take the CPU path, and exact resume."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import auto_augment as aa

from pretrain.data import build_train_loader, load_manifest, merge_states, train_transform
from pretrain.data import device_ops as ops
from pretrain.data.decode import CorruptSample, apply_transform, decode_image
from pretrain.data.device_augment import DeviceAugment
from pretrain.data.device_params import DeviceBatch, DeviceParamsTransform, Params
from pretrain.data.randaugment import posterize
from pretrain.data.rng import seed_globals
from tests.helpers_shards import encode, make_image, sample, write_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """The two scikit-learn photos (427 x 640) and crops of them: six real JPEGs of different sizes."""
    a, b = load_sample_images().images
    return [jpeg(a), jpeg(b), jpeg(a[50:350, 100:600]), jpeg(b[:200, :300]), jpeg(a[::2, ::2]), jpeg(b[100:, 200:])]


@pytest.fixture(scope="module")
def photo_224(photos) -> tuple[Image.Image, torch.Tensor]:
    img = Image.open(io.BytesIO(photos[0])).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    return img, torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None]


def diff(pil: Image.Image, t: torch.Tensor) -> torch.Tensor:
    return (torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() - t[0]).abs()


COLOUR_OPS = [  # (name, timm's PIL op, device op, argument): the colour ops equal PIL's exactly
    ("brightness", aa.brightness, ops.brightness, 1.7),
    ("brightness", aa.brightness, ops.brightness, 0.3),
    ("color", aa.color, ops.color, 1.7),
    ("color", aa.color, ops.color, 0.2),
    ("contrast", aa.contrast, ops.contrast, 1.9),
    ("contrast", aa.contrast, ops.contrast, 0.4),
    ("sharpness", aa.sharpness, ops.sharpness, 1.9),
    ("sharpness", aa.sharpness, ops.sharpness, 0.1),
    ("posterize", posterize, ops.posterize, 3),
    ("posterize", posterize, ops.posterize, 0),
    ("solarize", aa.solarize, ops.solarize, 100),
    ("solarize_add", aa.solarize_add, ops.solarize_add, 90),
    ("solarize_add", aa.solarize_add, ops.solarize_add, 200),
]


@pytest.mark.parametrize(("name", "pil_op", "op", "arg"), COLOUR_OPS)
def test_colour_ops_equal_pil(photo_224, name, pil_op, op, arg):
    img, x = photo_224
    assert diff(pil_op(img, arg), op(x, torch.tensor([arg]))).max() == 0


@pytest.mark.parametrize(("pil_op", "op"), [(aa.auto_contrast, ops.autocontrast), (aa.equalize, ops.equalize),
                                            (aa.invert, ops.invert)])
def test_argument_free_ops_equal_pil(photo_224, pil_op, op):
    img, x = photo_224
    assert diff(pil_op(img), op(x)).max() == 0


AFFINE = [("Rotate", aa.rotate, 40.0), ("Rotate", aa.rotate, -25.0), ("ShearX", aa.shear_x, 0.3),
          ("ShearY", aa.shear_y, -0.25), ("TranslateXRel", aa.translate_x_rel, 0.35),
          ("TranslateYRel", aa.translate_y_rel, -0.3)]


@pytest.mark.parametrize(("name", "pil_op", "arg"), AFFINE)
def test_affine_ops_within_tolerance_of_pil(photo_224, name, pil_op, arg):
    """Bilinear: within 1 level everywhere (rounding). Bicubic: torch's kernel is a=-0.75, PIL's a=-0.5: mean
    difference < 1 level, under 10 % of the values more than 2 levels apart (at edges)."""
    img, x = photo_224
    fill = torch.tensor([124.0, 116.0, 104.0])
    matrix = torch.tensor([ops.pil_matrix(name, arg, 224)], dtype=torch.float64)
    pil_fill = (124, 116, 104)
    d = diff(pil_op(img, arg, resample=Image.Resampling.BILINEAR, fillcolor=pil_fill),
             ops.affine(x, matrix, "bilinear", fill))
    assert d.max() <= 1
    d = diff(pil_op(img, arg, resample=Image.Resampling.BICUBIC, fillcolor=pil_fill),
             ops.affine(x, matrix, "bicubic", fill))
    assert d.mean() < 1.0 and (d > 2).float().mean() < 0.10


def draw_both(photos, cpu, n, seed=1000):
    """The CPU path's images and the device path's batch for n samples, each seeded as sample_stream seeds it."""
    dev = DeviceParamsTransform(cpu)
    images, items = [], []
    for k in range(n):
        data = photos[k % len(photos)]
        seed_globals(seed + k)
        images.append(apply_transform(*decode_image(data, cpu), cpu))
        seed_globals(seed + k)
        items.append(apply_transform(*decode_image(data, dev), dev))
    return torch.stack(images), dev.collate(items)


@pytest.mark.timeout(120)
def test_pipeline_matches_cpu_path_per_sample_and_in_statistics(photos):
    """Same draws: every sample within 3 levels on average of the CPU path's (a different crop, flip or op would be
    tens of levels off), the batch's per-channel mean within 1 level and std within 1 level; the erased regions
    are the CPU path's pixels exactly."""
    cpu = train_transform(224, randaugment="rand-m15-n2-p1.0", random_erasing=0.5, interpolation="random",
                          mean=MEAN, std=STD)
    ref, batch = draw_both(photos, cpu, 24)
    assert all(isinstance(p, Params) for p in batch.samples)
    assert {p.resample for p in batch.samples} == {"bilinear", "bicubic"} and any(p.flip for p in batch.samples)
    out = DeviceAugment(224, MEAN, "cpu")(batch)
    assert out.dtype == torch.uint8 and out.shape == ref.shape
    per_sample = (out.float() - ref.float()).abs().mean((1, 2, 3))
    assert per_sample.max() < 3, per_sample
    shifted = (out.float() - ref.float().roll(1, 0)).abs().mean((1, 2, 3))
    assert shifted.min() > 10  # the tolerance above tells samples apart
    for c, d in ((ref.float().mean((0, 2, 3)), out.float().mean((0, 2, 3))),
                 (ref.float().std((0, 2, 3)), out.float().std((0, 2, 3)))):
        assert (c - d).abs().max() < 1.0, (c, d)
    erased = [(i, p.erase) for i, p in enumerate(batch.samples) if p.erase is not None]
    assert erased
    for i, (top, left, pixels) in erased:
        assert torch.equal(out[i, :, top:top + pixels.shape[1], left:left + pixels.shape[2]], pixels)
        assert torch.equal(ref[i, :, top:top + pixels.shape[1], left:left + pixels.shape[2]], pixels)


def test_non_jpeg_and_truncated_jpeg_take_the_cpu_path(photos):
    """A PNG is finished in the worker, equal to the CPU path's; a truncated JPEG is corrupt on both paths."""
    cpu = train_transform(64, randaugment="rand-m9-n2", random_erasing=0.25)
    png = encode(make_image(3, (80, 60)), "PNG")
    ref, batch = draw_both([png], cpu, 1)
    assert isinstance(batch.samples[0], torch.Tensor)
    assert torch.equal(DeviceAugment(64, cpu.mean, "cpu")(batch), ref)
    cut = photos[3][: len(photos[3]) // 2]
    for transform in (cpu, DeviceParamsTransform(cpu)):
        with pytest.raises(CorruptSample):
            apply_transform(*decode_image(cut, transform), transform)


def test_batch_holds_bytes_in_one_tensor(photos):
    _, batch = draw_both(photos[:3], train_transform(32), 3)
    assert isinstance(batch, DeviceBatch) and len(batch) == 3
    assert [bytes(batch.encoded(i).numpy()) for i in range(3)] == photos[:3]


def device_loader(manifest, state=None):
    return build_train_loader(manifest, micro_batch=2, accum=2, rank=0, world_size=1, workers=2, seed=5,
                              transform=DeviceParamsTransform(train_transform(16, randaugment="rand-m9-mstd0.5",
                                                                              random_erasing=0.25)),
                              shuffle_buffer=5, state=state)


def take(ld, n):
    items = [next(ld) for _ in range(n)]
    ld.close()
    return items


def params_of(item) -> list:
    return [(p.box, p.resample, p.flip, [(o.name, o.args, o.resample) for o in p.ops],
             None if p.erase is None else (p.erase[0], p.erase[1], p.erase[2].tolist()))
            for p in item["image"].samples]


@pytest.mark.timeout(120)
def test_exact_resume_same_keys_and_parameters(tmp_path):
    """Resumed mid-epoch, the device path's batches have the uninterrupted run's keys, bytes and parameters."""
    m = load_manifest(write_dataset(str(tmp_path), [10, 10, 8], size=(40, 32),
                                    replace={5: sample("s00005", encode(make_image(5), "PNG"), 5, "png")}))
    full = take(device_loader(m), 9)
    state = json.loads(json.dumps(take(device_loader(m), 4)[-1]["state"]))
    resumed = take(device_loader(m, merge_states([state])), 5)
    assert any(isinstance(s, torch.Tensor) for i in full for s in i["image"].samples)  # the PNG
    for x, y in zip(full[4:], resumed, strict=True):
        assert x["key"] == y["key"] and torch.equal(x["image"].data, y["image"].data)
        xs = [s for s in x["image"].samples if isinstance(s, torch.Tensor)]
        ys = [s for s in y["image"].samples if isinstance(s, torch.Tensor)]
        assert len(xs) == len(ys) and all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))
        x["image"].samples = [s for s in x["image"].samples if isinstance(s, Params)]
        y["image"].samples = [s for s in y["image"].samples if isinstance(s, Params)]
        assert params_of(x) == params_of(y)


@pytest.mark.timeout(120)
def test_same_data_order_as_cpu_path(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [10, 10]))
    cpu = build_train_loader(m, micro_batch=2, accum=2, rank=0, world_size=1, workers=2, seed=5,
                             transform=train_transform(16, randaugment="rand-m9-mstd0.5", random_erasing=0.25),
                             shuffle_buffer=5)
    assert [i["key"] for i in take(device_loader(m), 6)] == [i["key"] for i in take(cpu, 6)]


def test_config_refuses_an_unknown_decode(tmp_path):
    from pretrain.config import ConfigError, PretrainConfig, load_config

    path = tmp_path / "cfg.yaml"
    path.write_text("data: {train: x, decode: gpu}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PretrainConfig, [])
    assert str(info.value).startswith("`data.decode`: ") and "cpu | device" in str(info.value)
    assert "\n" not in str(info.value)
