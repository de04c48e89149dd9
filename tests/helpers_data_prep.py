"""Test images for data_prep: real photos (scikit-learn, scikit-image) in many modes, and broken files."""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

# A truncated JPEG, an empty file and a text file named .jpg: what every real data set holds a few of.
BROKEN = {
    "truncated.jpg": "corrupt JPEG (OSError: image file is truncated",
    "empty.jpg": "empty file",
    "notes.jpg": "not an image (unrecognised format)",
}


@functools.cache
def photos() -> dict[str, np.ndarray]:
    """Real photos, shrunk to about 96 px: RGB ones, and 'camera' and 'coins' in grayscale."""
    china, flower = load_sample_images().images
    arrays = {
        "china": china,
        "flower": flower,
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
        "chelsea": skimage.data.chelsea(),
        "rocket": skimage.data.rocket(),
        "camera": skimage.data.camera(),
        "coins": skimage.data.coins(),
    }
    small = {}
    for name, array in arrays.items():
        image = Image.fromarray(array)
        image.thumbnail((128, 96))
        small[name] = np.asarray(image)
    return small


def encoded(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **save) -> bytes:
    """``array`` saved in ``fmt`` (optionally converted to ``mode`` first)."""
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def rgba_png(array: np.ndarray) -> bytes:
    """An RGBA PNG whose left half is fully transparent."""
    rgba = np.dstack([array, np.full(array.shape[:2], 255, np.uint8)])
    rgba[:, : array.shape[1] // 2, 3] = 0
    return encoded(rgba, "PNG")


def palette_png(array: np.ndarray) -> bytes:
    """A palette ('P') PNG with one transparent palette entry."""
    image = Image.fromarray(array).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    buf = io.BytesIO()
    image.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def good_images() -> dict[str, bytes]:
    """Name -> bytes of valid images in many formats and modes (names end in .jpg/.png; one lies)."""
    p = photos()
    return {
        "china.jpg": encoded(p["china"]),
        "flower.jpg": encoded(p["flower"], quality=70),
        "astronaut.png": encoded(p["astronaut"], "PNG"),
        "coffee_cmyk.jpg": encoded(p["coffee"], mode="CMYK"),
        "chelsea_alpha.png": rgba_png(p["chelsea"]),
        "rocket_palette.png": palette_png(p["rocket"]),
        "camera_gray.jpg": encoded(p["camera"]),
        "coins_really_jpeg.png": encoded(p["coins"]),
    }


def broken_images() -> dict[str, bytes]:
    """Name -> bytes of the files in :data:`BROKEN`."""
    jpeg = encoded(photos()["astronaut"])
    return {"truncated.jpg": jpeg[: len(jpeg) // 2], "empty.jpg": b"", "notes.jpg": b"shopping list: milk\n"}


def write_files(root: str, files: dict[str, bytes]) -> None:
    """Write ``{relative path: bytes}`` under ``root``."""
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def class_tree(
    root: str, classes: tuple[str, ...] = ("cat", "dog", "fish"), broken: bool = False
) -> dict[str, str]:
    """``root/<class>/<image>``: every good image in every class, plus (optionally) the broken ones in the
    last class. Returns {relative path: class} of the good images."""
    files, expected = {}, {}
    for cls in classes:
        for name, data in good_images().items():
            files[f"{cls}/{name}"] = data
            expected[f"{cls}/{name}"] = cls
    if broken:
        files.update({f"{classes[-1]}/{name}": data for name, data in broken_images().items()})
    write_files(root, files)
    return expected


def read_back(out: str) -> dict[str, dict]:
    """Every sample of a build, read through ``webdataset.WebDataset``: key -> sample (bytes values)."""
    import webdataset as wds  # imports torch: only where a test needs the reader

    from data_prep.manifest import read_manifest

    urls = [os.path.join(out, s["name"]) for s in read_manifest(out)["shards"]]
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert sample["__key__"] not in samples
        samples[sample["__key__"]] = sample
    return samples
