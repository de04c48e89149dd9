"""Image transforms for training and evaluation, with the same geometry and augmentations as timm's
create_transform, producing uint8 (3, H, W) tensors; normalisation happens on the device. Evaluation can
instead resize the whole image to img_size x img_size (resize="squash"), as the ViT/MLP-Mixer fine-tuning code
(google-research/vision_transformer, vit_jax/input_pipeline.py) does.

Speed: the crop is chosen on the JPEG header's size before decoding, and the JPEG is decoded at the largest
DCT reduction (1/2, 1/4, 1/8) that keeps the crop at least as large as the output in both dimensions, so the
output is still a downscale: by libjpeg-turbo with only the crop's window kept (pretrain.data.jpeg_turbo,
`jpeg_decoder`), or by PIL's draft. Random draws come from the global RNGs in timm's order (crop
and interpolation: `random`; flip: torch; RandAugment: NumPy and `random`; erasing: `random` and torch), so
with the same seeds and no JPEG reduction the output equals timm's (normalize=False, its magnitude ceiling
lifted: pretrain/data/randaugment.py applies the magnitude on the TF scale) exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp

from .decode import to_rgb
from .jpeg_turbo import decode_window, reduction_for, use_turbo
from .randaugment import rand_augment

Box = tuple[float, float, float, float]
EVAL_RESIZES = ("crop", "squash")


def _interpolations(name: str) -> list[Image.Resampling]:
    if name == "random":
        return [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC]
    try:
        return [str_to_pil_interp(name)]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}") from None


def _reduced(img: Image.Image, limit: float) -> int:
    """Decode `img` (still lazy) at the largest JPEG reduction 2**k <= min(8, limit); returns it (1: none)."""
    w, h = img.size
    scale = reduction_for(limit)
    if scale > 1 and img.draft(None, (w // scale, h // scale)) is None:
        scale = 1
    img.load()
    return scale


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) view of an RGB image."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


class TrainTransform:
    """Inception crop + flip + RandAugment + random erasing; see train_transform()."""

    def __init__(
        self, img_size, scale, ratio, hflip, randaugment, random_erasing, mean, std, interpolation, jpeg_decoder
    ):
        self.img_size = int(img_size)
        self.turbo = use_turbo(jpeg_decoder)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip = float(hflip)
        self.random_erasing = float(random_erasing)
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolations = _interpolations(interpolation)
        self.randaugment = (
            rand_augment(randaugment, self.img_size, self.mean, interpolation) if randaugment else None
        )

    def decode(self, img: Image.Image) -> tuple[Image.Image, tuple[Box, int]]:
        """Choose the crop on the header's size, decode at a reduction the crop allows; returns the crop box
        in the decoded image's coordinates and the reduction."""
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(img, self.scale, self.ratio)
        decoded = self._decode_turbo(img, left, top, w, h) if self.turbo else None
        if decoded is not None:
            return decoded
        s = _reduced(img, min(w, h) / self.img_size)
        return to_rgb(img), ((left / s, top / s, (left + w) / s, (top + h) / s), s)

    def _decode_turbo(
        self, img: Image.Image, left: int, top: int, w: int, h: int
    ) -> tuple[Image.Image, tuple[Box, int]] | None:
        """decode() by libjpeg-turbo, the same reduction and pixels; None where the PIL path must decode."""
        s = reduction_for(min(w, h) / self.img_size)
        if s == 1:  # only the crop becomes an image
            crop = decode_window(img, 1, (left, top, left + w, top + h))
            return None if crop is None else (crop, ((0, 0, w, h), 1))
        reduced = decode_window(img, s)
        return None if reduced is None else (reduced, ((left / s, top / s, (left + w) / s, (top + h) / s), s))

    def finish(self, img: Image.Image, ctx: tuple[Box, int]) -> torch.Tensor:
        """Resize the crop, flip, RandAugment, to uint8 tensor, erase."""
        box, s = ctx
        resample = (
            random.choice(self.interpolations) if len(self.interpolations) > 1 else self.interpolations[0]
        )
        size = (self.img_size, self.img_size)
        if s == 1:  # crop then resize, as torchvision does
            img = img.crop(tuple(int(v) for v in box)).resize(size, resample)
        else:
            img = img.resize(size, resample, box=box)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            img = self.randaugment(img)
        out = _to_tensor(img)
        if self.random_erasing > 0 and random.random() < self.random_erasing:
            _erase(out, self.mean, self.std)
        return out

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.finish(*self.decode(img))


def _erase(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """timm's RandomErasing (mode 'pixel', one region) in uint8, in place; see erase_region()."""
    region = erase_region(img.shape[1], img.shape[2], mean, std)
    if region is not None:
        top, left, pixels = region
        img[:, top : top + pixels.shape[1], left : left + pixels.shape[2]] = pixels


def erase_region(h: int, w: int, mean: Sequence[float], std: Sequence[float]) -> tuple[int, int, torch.Tensor] | None:
    """The draws of timm's RandomErasing (mode 'pixel', one region, area 2%-33%, aspect 0.3-3.3) on an h x w image:
    (top, left, uint8 (3, eh, ew) pixels: per-pixel normal noise in normalised space mapped back to [0, 255],
    clipped), or None when 10 tries find no region that fits."""
    for _ in range(10):
        area = random.uniform(0.02, 1 / 3) * h * w
        aspect = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
        eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if ew < w and eh < h:
            top, left = random.randint(0, h - eh), random.randint(0, w - ew)
            noise = torch.empty((3, eh, ew)).normal_()
            noise = noise * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
            return top, left, (noise * 255).round_().clamp_(0, 255).to(torch.uint8)
    return None


class EvalTransform:
    """"crop": resize the shorter side to floor(img_size / crop_pct), center crop img_size; "squash": resize
    the whole image to img_size x img_size (crop_pct unused); see eval_transform()."""

    def __init__(self, img_size, crop_pct, mean, std, interpolation, resize="crop", jpeg_decoder="auto"):
        if resize not in EVAL_RESIZES:
            raise ValueError(f"resize must be one of {', '.join(EVAL_RESIZES)}, got {resize!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.img_size = int(img_size)
        self.resize = resize
        self.resize_to = math.floor(self.img_size / crop_pct)
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation = _interpolations(interpolation)[0]
        self.turbo = use_turbo(jpeg_decoder)

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        if self.resize == "squash":  # the center crop below then keeps the whole image
            return self.img_size, self.img_size
        short, long = min(w, h), max(w, h)  # as torchvision's Resize(int)
        new_long = int(self.resize_to * long / short)
        return (self.resize_to, new_long) if w <= h else (new_long, self.resize_to)

    def decode(self, img: Image.Image) -> tuple[Image.Image, tuple[int, int, Box | None]]:
        """Decode at the largest reduction that keeps the image at least its resized size; returns the
        resized size and, if reduced, where the original lies in the decoded image."""
        w, h = img.size
        new_w, new_h = self._resized_size(w, h)
        limit = min(w / new_w, h / new_h)
        s = reduction_for(limit)
        decoded = decode_window(img, s) if self.turbo else None
        if decoded is None:
            s = _reduced(img, limit)
            decoded = to_rgb(img)
        return decoded, (new_w, new_h, (0.0, 0.0, w / s, h / s) if s > 1 else None)

    def finish(self, img: Image.Image, ctx: tuple[int, int, Box | None]) -> torch.Tensor:
        """Resize (as torchvision's Resize(int), or to the square), center crop (as its CenterCrop), to uint8
        tensor."""
        new_w, new_h, box = ctx
        if box is not None:
            img = img.resize((new_w, new_h), self.interpolation, box=box)
        elif img.size != (new_w, new_h):
            img = img.resize((new_w, new_h), self.interpolation)
        top = int(round((new_h - self.img_size) / 2.0))
        left = int(round((new_w - self.img_size) / 2.0))
        img = img.crop((left, top, left + self.img_size, top + self.img_size))
        return _to_tensor(img)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.finish(*self.decode(img))


def train_transform(
    img_size: int,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    randaugment: str = "",
    random_erasing: float = 0.0,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    interpolation: str = "bilinear",
    jpeg_decoder: str = "auto",
) -> TrainTransform:
    """Training transform: PIL image -> uint8 (3, img_size, img_size). `randaugment` is a timm-style string such
    as 'rand-m20-n2-p1.0' ('' for none), its magnitude on the TF scale (pretrain/data/randaugment.py); mean/std
    are for normalize_on_device and random erasing; jpeg_decoder: 'auto', 'turbo' (libjpeg-turbo, the crop's
    window) or 'pil' (pretrain.data.jpeg_turbo)."""
    return TrainTransform(
        img_size, scale, ratio, hflip, randaugment, random_erasing, mean, std, interpolation, jpeg_decoder
    )


def eval_transform(
    img_size: int,
    crop_pct: float = 0.875,
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    interpolation: str = "bilinear",
    resize: str = "crop",
    jpeg_decoder: str = "auto",
) -> EvalTransform:
    """Evaluation transform: PIL image -> uint8 (3, img_size, img_size). resize="crop" (timm): shorter side to
    img_size / crop_pct, center crop; resize="squash" (ViT/Mixer fine-tuning): the whole image to
    img_size x img_size, aspect ratio not kept, crop_pct unused. jpeg_decoder: as train_transform's."""
    return EvalTransform(img_size, crop_pct, mean, std, interpolation, resize, jpeg_decoder)


def normalize_on_device(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(x / 255 - mean) / std of a uint8 (N, 3, H, W) batch, in float32 on its device, then cast."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_on_device expects uint8 images, got {images.dtype}")
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().mul_(1 / (255 * std_t)).sub_(mean_t / std_t).to(dtype)
