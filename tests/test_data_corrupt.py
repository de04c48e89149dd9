"""Corrupt samples and truncated shards are skipped and counted; odd image modes decode as RGB."""

import numpy as np
import pytest
import torch

from pretrain.data import DataError, build_train_loader, eval_transform, load_manifest, train_transform
from pretrain.data.decode import CorruptSample, decode_image, decode_sample
from tests.helpers_shards import encode, make_image, sample, transparent_pngs, truncate, write_dataset

TRANSFORM = train_transform(16)


def odd_but_valid():
    """Grayscale, CMYK, palette with transparency, RGBA, PNG and WEBP-free extensions: all usable."""
    return {
        1: sample("s00001", encode(make_image(1, mode="L")), 1),
        2: sample("s00002", encode(make_image(2, mode="CMYK")), 2),
        4: sample("s00004", encode(make_image(4, mode="P"), "PNG", transparency=0), 4, ext="png"),
        5: sample("s00005", encode(make_image(5, mode="RGBA"), "PNG"), 5, ext="png"),
        6: sample("s00006", encode(make_image(6), "PNG"), 6, ext="jpeg"),  # PNG bytes under another name
    }


def broken():
    return {
        3: sample("s00003", encode(make_image(3))[:700], 3),  # truncated JPEG
        7: sample("s00007", b"\x00garbage" * 20, 7),
        8: sample("s00008", encode(make_image(8)), None),  # no cls
        9: sample("s00009", encode(make_image(9)), 10),  # class out of range
        10: sample("s00010", encode(make_image(10)), 0) | {"cls": b"ten"},
        11: {"__key__": "s00011", "cls": b"1", "json": b"{}"},  # no image
    }


def test_decode_reports_each_problem():
    reasons = {}
    for index, raw in broken().items():
        with pytest.raises(CorruptSample) as e:
            decode_sample(raw, TRANSFORM, 10)
        reasons[index] = str(e.value)
    assert reasons[3].startswith("image does not decode: OSError: image file is truncated")
    assert reasons[7].startswith("image does not decode: UnidentifiedImageError: cannot identify image file")
    assert reasons[8] == "no cls"
    assert reasons[9] == "cls 10 outside [0, 10)"
    assert reasons[10] == "cls is not an integer: b'ten'"
    assert reasons[11] == "no image entry among ['cls', 'json']"
    for raw in odd_but_valid().values():
        image, _ = decode_sample(raw, TRANSFORM, 10)
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_decode_as_white_as_data_prep_makes_them(mode):
    data, colour = transparent_pngs()[mode]  # 32x32, left half transparent
    rgb, _ = decode_image(data, np.asarray)  # a plain transform
    pixels = np.asarray(rgb)
    assert (pixels[:, :16] == 255).all() and (pixels[:, 16:] == colour).all()
    whole_image = train_transform(16, scale=(1, 1), ratio=(1, 1), hflip=0)
    for transform in (whole_image, eval_transform(16)):  # they decode through transforms.decode
        image, _ = decode_sample(sample("s00000", data, 0, ext="png"), transform, 10)
        assert (image[:, :, :4] == 255).all()


def unshuffled_loader(manifest):
    """One stream (W = 1, V = 1), no shuffle buffer: raw order is the shard's order."""
    return build_train_loader(
        manifest,
        micro_batch=2,
        accum=1,
        rank=0,
        world_size=1,
        workers=0,
        seed=0,
        transform=TRANSFORM,
        shuffle_buffer=0,
    )


def test_the_next_raw_sample_takes_a_corrupt_samples_place_and_counts(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [24], replace=odd_but_valid() | broken()))
    ld = unshuffled_loader(m)
    assert ld.steps_per_round == 12
    items = [next(ld) for _ in range(12)]
    keys = [k for it in items for k in it["key"]]
    good = [0, 1, 2, 4, 5, 6] + list(range(12, 24))  # epoch 0 has 18 good samples, epoch 1 lends 6 more
    assert keys == [f"s{i:05d}" for i in good + good[:6]]
    assert [it["corrupt"] for it in items] == [0, 1, 1, 6, 6, 6, 6, 6, 6, 6, 7, 7]
    assert ld.state()["streams"]["0"] == {
        "round": 1,
        "pos": 7,
        "good": 6,
        "corrupt": 7,
        "truncated": 0,
    }


def test_the_sample_a_round_leaves_opens_the_next_round(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [13], replace={3: broken()[3]}))
    ld = unshuffled_loader(m)  # Q = 12: round 1 reads sample 12, which round 0 left, then epoch 1
    keys = [k for _ in range(7) for k in next(ld)["key"]]
    assert keys == [f"s{i:05d}" for i in [0, 1, 2, *range(4, 13), 0, 1]]
    assert ld.state()["streams"]["0"]["round"] == 1


@pytest.mark.timeout(60)
def test_loader_goes_on_after_a_truncated_shard(tmp_path):
    manifest = write_dataset(str(tmp_path), [10, 10, 10])
    truncate(f"{tmp_path}/shard-0001.tar", 0.3)
    m = load_manifest(manifest)
    ranks = [
        build_train_loader(
            m,
            micro_batch=2,
            accum=1,
            rank=r,
            world_size=2,
            workers=2,
            seed=1,
            transform=TRANSFORM,
            shuffle_buffer=2,
        )
        for r in range(2)
    ]
    spe = ranks[0].steps_per_round  # 4 streams x 6 samples: 3 micro-batches each, 6 steps
    items = [[next(ld) for _ in range(3 * spe)] for ld in ranks]
    for ld in ranks:
        ld.close()
    assert [len(x) for x in items] == [18, 18]
    assert sum(x[-1]["truncated"] for x in items) >= 3  # at least once per epoch
    assert [it["step"] for it in items[1]] == list(range(3 * spe))


def test_a_stream_with_nothing_usable_raises_instead_of_reading_forever(tmp_path):
    junk = {i: sample(f"s{i:05d}", b"junk", 0) for i in range(6)}
    m = load_manifest(write_dataset(str(tmp_path), [6], replace=junk))
    with pytest.raises(DataError) as e:
        next(unshuffled_loader(m))
    assert str(e.value) == (
        "stream 0 found no usable sample in 3 rounds in a row (last: round 2, 6 samples each): "
        "are the shards broken?"
    )
