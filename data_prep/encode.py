"""Read, validate and (optionally) re-encode one image.

Validation always decodes the whole image (``Image.open`` + ``load``); truncated files fail because
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off. Without ``resize_shorter`` the original bytes are kept,
under the extension of their real format, whatever their mode (grayscale, CMYK, palette, alpha stay as
they are). With it, the image becomes an RGB JPEG whose shorter side is at most ``resize_shorter`` (never
upscaled); alpha and transparent palettes are composited on white. JPEG draft mode (DCT-domain downscaling)
is used when the image is at least twice the target size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tiff", "JPEG2000": "jp2"}
_WHITE = (255, 255, 255)


class BadImage(Exception):
    """The bytes are not a usable image; ``str(e)`` is the reason recorded in the manifest."""


@dataclass(frozen=True)
class EncodedImage:
    """The bytes to store, their extension, and the original image size."""

    ext: str
    data: bytes
    width: int
    height: int


def extension(pil_format: str) -> str:
    """The file extension for a PIL format name ('JPEG' -> 'jpg', 'PNG' -> 'png', ...)."""
    return _EXTENSIONS.get(pil_format, pil_format.lower())


def target_size(width: int, height: int, shorter: int) -> tuple[int, int] | None:
    """Size with the shorter side equal to ``shorter`` (aspect kept), or None if the image is not larger."""
    if min(width, height) <= shorter:
        return None
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode; transparency (alpha or a transparent palette entry) is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def encode_image(data: bytes, resize_shorter: int | None = None, quality: int = 90) -> EncodedImage:
    """Validate ``data`` by decoding it; return what to store. Raises :class:`BadImage` with the reason."""
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Exception as e:  # PIL raises many types on bad headers; each is a bad image, not a crash
        raise BadImage(f"unreadable image header ({type(e).__name__}: {e})") from None
    with image:
        width, height = image.size
        fmt = image.format or "unknown"
        try:
            size = target_size(width, height, resize_shorter) if resize_shorter else None
            if size is not None:
                image.draft(image.mode, size)
            image.load()
            if resize_shorter is None:
                return EncodedImage(extension(fmt), data, width, height)
            rgb = to_rgb(image)
            if size is not None:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=quality)
        except Exception as e:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError, ...
            raise BadImage(f"corrupt {fmt} ({type(e).__name__}: {e})") from None
    return EncodedImage("jpg", buf.getvalue(), width, height)
