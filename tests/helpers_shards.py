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


def write_manifest(folder: str, shard_names: Sequence[str], counts: Sequence[int], num_classes: int) -> str:
    """manifest.json for shards already in `folder`; returns its path."""
    shards = []
    for name, count in zip(shard_names, counts, strict=True):
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
    doc = {
        "num_samples": sum(counts),
        "num_classes": num_classes,
        "classes": [f"class{i}" for i in range(num_classes)],
        "shards": shards,
    }
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


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
