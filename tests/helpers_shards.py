"""Test helper: write WebDataset shards and a manifest (data_prep's format) from in-memory PIL images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from data_prep import manifest as prep_manifest
from data_prep.index import write_index


def make_image(index: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Image.Image:
    """A small image that differs from every other index (smooth gradients plus a coloured block)."""
    w, h = size
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, size=3)
    arr = np.stack([(x * 5 + y * 3 + base[c]) % 256 for c in range(3)], axis=-1).astype(np.uint8)
    bx, by = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    arr[by : by + h // 3, bx : bx + w // 3] = rng.integers(0, 256, size=3)
    return Image.fromarray(arr, "RGB").convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    """The image encoded as `fmt` (JPEG quality 90 unless given)."""
    if fmt == "JPEG":
        kw.setdefault("quality", 90)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def sample(key: str, image: bytes, label: int | None, ext: str = "jpg") -> dict[str, bytes | str]:
    """One sample as data_prep writes it: image, cls (integer as text) and json metadata."""
    out: dict[str, bytes | str] = {"__key__": key, ext: image, "json": json.dumps({"key": key}).encode()}
    if label is not None:
        out["cls"] = str(label).encode()
    return out


def write_shard(path: str, samples: Iterable[dict]) -> int:
    """Write samples into a tar at `path` (files `<key>.<ext>`); returns the number of samples."""
    n = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def _count_labels(data: bytes, class_counts: list[int]) -> None:
    """Add the shard's usable `cls` members (integers in range) to `class_counts`."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.name.endswith(".cls"):
                text = tar.extractfile(member).read()
                if text.strip().isdigit() and int(text) < len(class_counts):
                    class_counts[int(text)] += 1


def write_manifest(folder: str, shard_names: Sequence[str], counts: Sequence[int], num_classes: int) -> str:
    """manifest.json (data_prep's format) and each shard's index for shards already in `folder`; returns its path."""
    shards, class_counts = [], [0] * num_classes
    for name, count in zip(shard_names, counts, strict=True):
        write_index(os.path.join(folder, name))
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        shards.append(
            {
                "name": name,
                "num_samples": count,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        _count_labels(data, class_counts)
    classes = [f"class{i}" for i in range(num_classes)]
    prep_manifest.write_manifest(folder, prep_manifest.make_manifest("folders", {}, classes, shards, [], class_counts))
    return os.path.join(folder, prep_manifest.MANIFEST_NAME)


def write_dataset(
    folder: str,
    shard_sizes: Sequence[int],
    *,
    num_classes: int = 10,
    size: tuple[int, int] = (40, 32),
    replace: dict[int, dict] | None = None,
) -> str:
    """Shards `shard-XXXX.tar` holding sum(shard_sizes) JPEG samples keyed `sNNNNN` (global index), label
    index % num_classes; `replace` maps a global index to a different sample. Returns the manifest path."""
    os.makedirs(folder, exist_ok=True)
    replace = replace or {}
    names, index = [], 0
    for i, n in enumerate(shard_sizes):
        name = f"shard-{i:04d}.tar"
        samples = []
        for g in range(index, index + n):
            samples.append(
                replace.get(g) or sample(f"s{g:05d}", encode(make_image(g, size)), g % num_classes)
            )
        write_shard(os.path.join(folder, name), samples)
        names.append(name)
        index += n
    return write_manifest(folder, names, shard_sizes, num_classes)


def truncate(path: str, keep_fraction: float) -> None:
    """Cut a file to a fraction of its bytes (a truncated download or an unclosed writer)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


GREEN, GREY = (10, 200, 30), 100


def transparent_pngs(size: int = 32) -> dict[str, tuple[bytes, tuple[int, int, int]]]:
    """Mode -> (PNG bytes, opaque colour) of a `size` x `size` image whose left half is transparent (alpha 0, or
    the transparent palette entry, over a dark colour) and whose right half is opaque."""
    half = np.arange(size) >= size // 2  # True on the opaque half
    alpha = np.where(half, 255, 0).astype(np.uint8)[None, :].repeat(size, 0)
    rgba = np.dstack([np.full((size, size, 3), GREEN, np.uint8), alpha])
    la = np.dstack([np.full((size, size), GREY, np.uint8), alpha])
    palette = Image.fromarray(half[None, :].repeat(size, 0).astype(np.uint8), "P")
    palette.putpalette([*GREEN, *GREEN])  # entry 0 (transparent) and entry 1 (opaque) share the colour
    return {
        "RGBA": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), GREEN),
        "LA": (encode(Image.fromarray(la, "LA"), "PNG"), (GREY,) * 3),
        "P": (encode(palette, "PNG", transparency=0), GREEN),
    }
