"""The transforms' JPEG decode with libjpeg-turbo (through simplejpeg, which bundles it): the crop's window of
the JPEG at a DCT reduction, as a PIL image.

The reduction rule is the PIL path's (pretrain.data.transforms): 1/2, 1/4 or 1/8, the largest that keeps the
crop at least as large as the output, done by libjpeg's scaled IDCT as PIL's draft does it, so the pixels are
PIL's bit for bit (tests/test_jpeg_turbo.py). The whole image is decoded at that reduction: libjpeg-turbo's
entropy decoding, most of the time at a reduction, reads every block up to the crop's last row anyway, and a
lossless crop before decoding (PyTurboJPEG's `crop`) measured slower than the whole decode (docs/benchmarks.md
"Input pipeline"). Without a reduction only the crop becomes a PIL image; with one, the whole reduced image
(the resize then reads the filter's support around the box exactly as on the PIL path).

Selection (`data.jpeg_decoder`): "turbo" needs simplejpeg, "pil" never uses it, "auto" uses it where it is
importable. Non-JPEG images, JPEGs that are neither RGB nor greyscale (CMYK: PIL converts those) and JPEGs that
libjpeg-turbo rejects in strict mode (PIL may accept them with a warning, or call them corrupt) take the PIL path,
so both paths accept and reject the same samples.
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError as exc:  # pragma: no cover - simplejpeg is a dependency; a platform without a wheel lacks it
    simplejpeg, _MISSING = None, f"{type(exc).__name__}: {exc}"
else:
    _MISSING = ""

DECODERS = ("auto", "turbo", "pil")
Window = tuple[int, int, int, int]


def available() -> bool:
    """Whether the libjpeg-turbo decoder can be used here."""
    return simplejpeg is not None


def use_turbo(choice: str) -> bool:
    """The `data.jpeg_decoder` choice resolved on this machine; "auto" without simplejpeg says so in one line."""
    if choice not in DECODERS:
        raise ValueError(f"jpeg_decoder must be one of {', '.join(DECODERS)}, got {choice!r}")
    if choice == "pil":
        return False
    if choice == "turbo" and not available():
        raise ValueError(f"jpeg_decoder 'turbo' needs simplejpeg ({_MISSING}): pip install simplejpeg, or use 'pil'")
    if not available():
        print(f"jpeg_decoder auto: simplejpeg not importable ({_MISSING}); decoding JPEGs with PIL", file=sys.stderr)
    return available()


def reduction_for(limit: float) -> int:
    """The largest JPEG DCT reduction 2**k <= min(8, limit) (1: none)."""
    return next((s for s in (8, 4, 2) if s <= limit), 1)


def decode_window(img: Image.Image, scale: int, window: Window | None = None) -> Image.Image | None:
    """The lazy JPEG `img` decoded at 1/`scale`, cut to `window` (in the reduced image's pixels; None: whole),
    as an RGB image; None where the PIL path must decode it (not a JPEG read from memory, not RGB or greyscale,
    rejected)."""
    fp = getattr(img, "fp", None)
    if simplejpeg is None or img.format != "JPEG" or img.mode not in ("RGB", "L") or not isinstance(fp, io.BytesIO):
        return None
    w, h = img.size
    size = (-(-h // scale), -(-w // scale))  # libjpeg's scaled size: ceil
    try:
        rgb = simplejpeg.decode_jpeg(fp.getvalue(), colorspace="RGB", min_height=size[0], min_width=size[1])
    except ValueError:
        return None
    if rgb.shape[:2] != size:  # a scaling factor other than 1/scale (only possible for images a few px wide)
        return None
    if window is not None:
        x0, y0, x1, y1 = window
        rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    return Image.fromarray(rgb)
