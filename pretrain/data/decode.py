"""Raw tar sample -> (image tensor, label), with corrupt samples reported as `CorruptSample`.

Only the decoding is guarded (bad bytes, truncated images, bad labels); an exception raised by a transform
after decoding is a bug and propagates.

Images become RGB as data_prep makes them (``data_prep.encode.to_rgb``: transparency composited on white).
A transform is any callable PIL.Image (RGB) -> tensor. Ours (pretrain.data.transforms) also split into
`decode(lazy_image) -> (rgb_image, ctx)` and `finish(rgb_image, ctx) -> tensor`, so they can decode a JPEG
at a reduced size when the crop allows it (libjpeg-turbo, pretrain.data.jpeg_turbo, reading the bytes of the lazy
image's BytesIO; or PIL draft).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import torch
from PIL import Image

from data_prep.encode import to_rgb

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pnm")
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class CorruptSample(Exception):
    """A sample that cannot be used: undecodable image, missing image, missing or out-of-range label."""


def sample_label(raw: dict, num_classes: int) -> int:
    """The integer class in the sample's `cls` entry."""
    text = raw.get("cls")
    if text is None:
        raise CorruptSample("no cls")
    try:
        label = int(text.decode("ascii").strip() if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, ValueError):
        raise CorruptSample(f"cls is not an integer: {text[:20]!r}") from None
    if not 0 <= label < num_classes:
        raise CorruptSample(f"cls {label} outside [0, {num_classes})")
    return label


def image_bytes(raw: dict) -> bytes:
    """The encoded image of a sample (the first image extension present)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return raw[ext]
    raise CorruptSample(f"no image entry among {sorted(k for k in raw if not k.startswith('__'))}")


def decode_image(data: bytes, transform: Any) -> tuple[Image.Image, Any]:
    """Decode (guarded) and return what `apply_transform` needs."""
    try:
        img = Image.open(io.BytesIO(data))
        if hasattr(transform, "decode"):
            return transform.decode(img)
        img.load()
        return to_rgb(img), None
    except DECODE_ERRORS as exc:
        raise CorruptSample(f"image does not decode: {type(exc).__name__}: {exc}") from None


def apply_transform(img: Image.Image, ctx: Any, transform: Any) -> torch.Tensor:
    """Run the (unguarded) rest of the transform on a decoded RGB image."""
    return transform.finish(img, ctx) if hasattr(transform, "finish") else transform(img)


def decode_sample(raw: dict, transform: Any, num_classes: int) -> tuple[torch.Tensor, int]:
    """(transformed image, label) of a raw sample; raises CorruptSample if it is unusable."""
    label = sample_label(raw, num_classes)
    img, ctx = decode_image(image_bytes(raw), transform)
    return apply_transform(img, ctx, transform), label
