"""The embedded demo data set: scikit-learn's 1,797 real 8x8 handwritten digits as RGB PNGs.

Digits are drawn dark on white, upscaled with a bicubic filter to ``image_size``; train/val is a stratified
split that depends only on ``val_fraction`` (a fixed seed, not ``--seed``), so the two never overlap.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_prep.sources import Source

SPLIT_SEED = 20240601
NUM_PIXELS = 64


@dataclass(frozen=True)
class DigitsReader:
    """Renders digit ``digits/NNNN`` (its index in load_digits) as PNG bytes; picklable for workers."""

    pixels: bytes  # all images, 64 ink levels in 0..16 each, in load_digits order
    image_size: int

    def read(self, ref: str) -> bytes:
        index = int(ref.rsplit("/", 1)[1])
        ink = np.frombuffer(self.pixels, np.uint8, NUM_PIXELS, index * NUM_PIXELS).reshape(8, 8)
        gray = np.round(255.0 - ink * (255.0 / 16.0)).astype(np.uint8)
        size = (self.image_size, self.image_size)
        image = Image.fromarray(gray, "L").resize(size, Image.Resampling.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()


def split_indices(targets: list[int], split: str, val_fraction: float) -> list[int]:
    """Sorted indices of ``split`` ('train' or 'val'): per class, a seeded shuffle, the first part is val."""
    rng = random.Random(SPLIT_SEED)
    chosen: list[int] = []
    for cls in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == cls]
        rng.shuffle(members)
        num_val = round(len(members) * val_fraction)
        chosen += members[:num_val] if split == "val" else members[num_val:]
    return sorted(chosen)


def digits_source(split: str, val_fraction: float, image_size: int) -> Source:
    """The digits split as a :class:`Source` (classes '0'..'9')."""
    from sklearn.datasets import load_digits  # slow import, only for this layout

    digits = load_digits()
    targets = [int(t) for t in digits.target]
    pixels = np.asarray(digits.images, dtype=np.uint8).tobytes()
    items = [(f"digits/{i:04d}", targets[i]) for i in split_indices(targets, split, val_fraction)]
    return Source(classes=[str(c) for c in range(10)], items=items, reader=DigitsReader(pixels, image_size))
