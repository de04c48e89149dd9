"""data_prep.encode: validation by decoding, format detection, RGB re-encoding, and tar size prediction."""

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep.encode import BadImage, encode_image, target_size
from data_prep.shards import ShardWriter, sample_bytes, shard_bytes
from tests.helpers_data_prep import BROKEN, broken_images, good_images, photos
from tests.helpers_shards import transparent_pngs


def test_original_bytes_are_kept_under_the_real_extension():
    for data in good_images().values():
        image = encode_image(data)
        assert image.data == data
        real = Image.open(io.BytesIO(data))
        assert (image.width, image.height) == real.size
        assert image.ext == {"JPEG": "jpg", "PNG": "png"}[real.format]
    assert encode_image(good_images()["coins_really_jpeg.png"]).ext == "jpg"


def test_reencoding_makes_rgb_jpeg_with_the_shorter_side_capped():
    for data in good_images().values():
        original = Image.open(io.BytesIO(data))
        image = encode_image(data, resize_shorter=64, quality=90)
        decoded = Image.open(io.BytesIO(image.data))
        assert (image.ext, decoded.format, decoded.mode) == ("jpg", "JPEG", "RGB")
        assert min(decoded.size) == 64
        assert (image.width, image.height) == original.size
        assert decoded.size == target_size(*original.size, 64)


def test_small_images_are_not_upscaled():
    data = good_images()["china.jpg"]  # 128x85
    decoded = Image.open(io.BytesIO(encode_image(data, resize_shorter=300).data))
    assert decoded.size == (128, 85)


def test_target_size_keeps_aspect_and_sets_the_shorter_side():
    assert target_size(500, 375, 256) == (341, 256)
    assert target_size(375, 500, 256) == (256, 341)
    assert target_size(256, 900, 256) is None


def test_alpha_is_composited_on_white():
    data = good_images()["chelsea_alpha.png"]  # left half fully transparent
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(data, resize_shorter=1000, quality=95).data)))
    assert decoded[:, :40].min() >= 250


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(mode):
    data, colour = transparent_pngs()[mode]  # 32x32, left half transparent
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(data, resize_shorter=32).data))).astype(int)
    assert np.abs(decoded[:, :8] - 255).max() <= 2 and np.abs(decoded[:, 24:] - colour).max() <= 2


def test_cmyk_becomes_rgb_with_the_same_picture():
    source = photos()["coffee"].astype(int)
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(good_images()["coffee_cmyk.jpg"], 1000).data)))
    assert decoded.shape == source.shape
    assert np.abs(decoded.astype(int) - source).mean() < 12


def test_broken_files_raise_bad_image_with_the_reason():
    for name, data in broken_images().items():
        with pytest.raises(BadImage) as info:
            encode_image(data)
        assert str(info.value).startswith(BROKEN[name])
        with pytest.raises(BadImage):
            encode_image(data, resize_shorter=32)


def test_shards_are_what_tarfile_writes_and_their_size_is_predicted(tmp_path):
    writer = ShardWriter(str(tmp_path / "a.tar"))
    assert not os.path.exists(tmp_path / "a.tar") and os.path.exists(tmp_path / ".a.tar.tmp")
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for i, data in enumerate(good_images().values()):
            members = {"jpg": data, "cls": b"1", "json": b"{}" * i}
            writer.add(f"s-{i:09d}", members)
            for ext in sorted(members):
                member = tarfile.TarInfo(f"s-{i:09d}.{ext}")
                member.size, member.mode, member.uname, member.gname = (
                    len(members[ext]),
                    0o444,
                    "data_prep",
                    "data_prep",
                )
                tar.addfile(member, io.BytesIO(members[ext]))
    payload = writer.payload
    info = writer.close()
    assert (tmp_path / "a.tar").read_bytes() == reference.getvalue()
    assert info.sha256 == hashlib.sha256(reference.getvalue()).hexdigest()
    assert info.bytes == os.path.getsize(tmp_path / "a.tar") == shard_bytes(payload)
    assert sample_bytes({"jpg": b"x" * 513, "cls": b"1"}) == 512 + 1024 + 512 + 512
    assert not os.path.exists(tmp_path / ".a.tar.tmp")
