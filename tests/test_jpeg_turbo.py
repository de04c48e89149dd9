"""The libjpeg-turbo decode (data.jpeg_decoder): the same crop boxes, random streams and pixels as the PIL path,
per box, on real photos; the same samples accepted and rejected; the same loader batches and states; the config
key and the fallback where simplejpeg is missing; the decode benchmark's table."""

import io

import pytest
import torch
from PIL import Image

from benchmarks import bench_jpeg_decode
from benchmarks.photos import source_photos
from pretrain.config import ConfigError, DataConfig
from pretrain.data import build_train_loader, eval_transform, jpeg_turbo, load_manifest, train_transform
from pretrain.data.decode import CorruptSample, decode_sample
from pretrain.data.rng import seed_globals
from tests.helpers_shards import encode, sample, write_manifest, write_shard

RECIPE = dict(randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, interpolation="random")


def photo_jpegs(long_sides=(500, 1000), mode: str = "RGB") -> list[bytes]:
    """Each of the nine photos as a JPEG (quality 90) with each long side."""
    out = []
    for src in source_photos():
        for side in long_sides:
            img = Image.fromarray(src)
            w, h = img.size
            img = img.resize((side, round(side * h / w)) if w >= h else (round(side * w / h), side))
            out.append(encode(img.convert(mode), quality=90))
    return out


def both(data: bytes, seed: int, size: int = 224, **kw) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(turbo output, PIL output, reduction) of one sample under one seed."""
    turbo, pil = train_transform(size, jpeg_decoder="turbo", **kw), train_transform(size, jpeg_decoder="pil", **kw)
    seed_globals(seed)
    img, (box, s) = turbo.decode(Image.open(io.BytesIO(data)))
    a = turbo.finish(img, (box, s))
    seed_globals(seed)
    return a, pil(Image.open(io.BytesIO(data))), s


def test_turbo_equals_the_pil_path_bit_for_bit_per_box_on_photos():
    reductions = []
    for i, data in enumerate(photo_jpegs()):
        for seed in range(4):
            a, b, s = both(data, 10 * i + seed, **RECIPE)
            assert torch.equal(a, b), (i, seed, s)
            reductions.append(s)
    assert set(reductions) == {1, 2}  # 1000 px photos: big crops decode at 1/2
    big, reductions = photo_jpegs((2000,))[0], []
    for seed in range(6):  # 48 px out of a 2000 px photo: 1/4 and 1/8
        a, b, s = both(big, seed, size=48, **RECIPE)
        assert torch.equal(a, b), (seed, s)
        reductions.append(s)
    assert 8 in reductions


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_eval_turbo_equals_the_pil_path_bit_for_bit(resize):
    turbo, pil = (eval_transform(64, resize=resize, jpeg_decoder=d) for d in ("turbo", "pil"))
    reductions = set()
    for data in photo_jpegs((300, 500, 1000)):
        img, _ = turbo.decode(Image.open(io.BytesIO(data)))
        assert img.format is None  # decoded by libjpeg-turbo, not PIL's JpegImageFile
        reductions.add(round(Image.open(io.BytesIO(data)).size[0] / img.size[0]))
        assert torch.equal(turbo(Image.open(io.BytesIO(data))), pil(Image.open(io.BytesIO(data))))
    assert reductions == {2, 4, 8}


def test_turbo_keeps_only_the_crop_without_a_reduction():
    data = photo_jpegs((500,))[0]
    t = train_transform(224, jpeg_decoder="turbo")
    for seed in range(5):
        seed_globals(seed)
        img, (box, s) = t.decode(Image.open(io.BytesIO(data)))
        assert s == 1 and box == (0, 0, *img.size) and img.size != Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs_match_the_pil_path(mode):
    data = photo_jpegs((600,), mode)[1]
    assert Image.open(io.BytesIO(data)).mode == mode
    for seed in range(4):
        a, b, _ = both(data, seed, **RECIPE)
        assert torch.equal(a, b)


def test_png_and_broken_jpegs_take_the_pil_path():
    png = encode(Image.fromarray(source_photos()[0]), "PNG")
    assert jpeg_turbo.decode_window(Image.open(io.BytesIO(png)), 1) is None
    a, b, _ = both(png, 0, size=64)
    assert torch.equal(a, b)
    jpeg = photo_jpegs((500,))[0]
    truncated = {"jpg": jpeg[: len(jpeg) // 2], "cls": b"1"}
    for decoder in ("turbo", "pil"):  # PIL decides: a truncated JPEG is corrupt on both paths
        with pytest.raises(CorruptSample, match="truncated"):
            decode_sample(truncated, train_transform(64, jpeg_decoder=decoder), 10)


@pytest.mark.timeout(120)
def test_loader_batches_and_states_are_those_of_the_pil_path(tmp_path):
    jpegs = photo_jpegs((200, 400))
    cut = {i: jpegs[i][: len(jpegs[i]) // 3] for i in (2, 5, 13)}  # truncated JPEGs: corrupt on both paths
    samples = [sample(f"s{i:05d}", cut.get(i, b), i % 4) for i, b in enumerate(jpegs)]
    for k in range(2):
        write_shard(str(tmp_path / f"shard-{k:04d}.tar"), samples[9 * k : 9 * k + 9])
    manifest = load_manifest(write_manifest(str(tmp_path), ["shard-0000.tar", "shard-0001.tar"], [9, 9], 4))

    def run(decoder):
        ld = build_train_loader(manifest, micro_batch=2, accum=1, rank=0, world_size=1, workers=2, seed=3,
                                transform=train_transform(96, jpeg_decoder=decoder, **RECIPE), shuffle_buffer=4)
        items = [next(ld) for _ in range(12)]
        ld.close()
        return items

    turbo, pil = run("turbo"), run("pil")
    assert turbo[-1]["corrupt"] > 0
    for x, y in zip(turbo, pil, strict=True):
        assert (x["key"], x["state"], x["corrupt"]) == (y["key"], y["state"], y["corrupt"])
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_config_key_and_the_fallback_without_simplejpeg(monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"`data.jpeg_decoder`: 'fast' is not allowed; expected auto \| turbo"):
        DataConfig(train="x", jpeg_decoder="fast").validate("data")
    assert jpeg_turbo.use_turbo("auto") and not jpeg_turbo.use_turbo("pil")
    monkeypatch.setattr(jpeg_turbo, "simplejpeg", None)
    with pytest.raises(ConfigError, match="`data.jpeg_decoder`: 'turbo' is not allowed; expected 'auto' or 'pil'"):
        DataConfig(train="x", jpeg_decoder="turbo").validate("data")
    DataConfig(train="x", jpeg_decoder="auto").validate("data")
    t = train_transform(64)  # auto: one line, then the PIL path
    assert not t.turbo
    assert capsys.readouterr().err.count("\n") == 1
    data = photo_jpegs((500,))[0]
    assert jpeg_turbo.decode_window(Image.open(io.BytesIO(data)), 1) is None


def test_decode_benchmark_prints_a_row_per_size_with_both_decoders(capsys):
    assert bench_jpeg_decode.main(["--images", "4", "--rounds", "1", "--long-side", "300", "600"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| long side | reduced crops | pil ms/img | turbo ms/img")
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| 300 px", "| 600 px"]
