"""timm's RandAugment ops (pretrain/data/randaugment.py: timm's ops on the TF scale) as batched tensor ops for
`data.decode: device`: x is float (n, 3, H, W) holding integers in [0, 255] on any device, each argument a per-sample
(n,) tensor; every op returns integers again, as PIL's uint8 ops do (its truncations and roundings copied where
they are known). Measured against timm's PIL ops in tests/test_device_augment.py (tolerance per op there).

The affine ops (rotate, shear, translate) become one `affine_grid`/`grid_sample` per interpolation with per-sample
matrices: PIL's output-to-input matrices (pixel centres at +0.5) mapped to grid_sample's normalised coordinates;
points that fall outside the image get the fill colour, as PIL's transform gives them. torch's bicubic kernel is
a=-0.75 where PIL's is a=-0.5 (the difference is within the stated tolerance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_L_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)  # PIL's RGB -> L (ITU-R 601-2, 16-bit fixed point)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert('L'): (n, 1, H, W) integers."""
    w = torch.tensor(_L_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.floor((x * w).sum(1, keepdim=True) + 0.5)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, x, factor): truncated, clipped."""
    return torch.floor((degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_grey(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(_grey(x).mean((1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, /13), whose border pixels are the image's."""
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = torch.floor(F.conv2d(x, kernel / 13, groups=3) + 0.5).clamp_(0, 255)
    return _blend(smooth, x, factor)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep `bits` high bits (0: black, >= 8: unchanged)."""
    step = torch.pow(2.0, 8 - bits.clamp(0, 8).to(x.dtype)).view(-1, 1, 1, 1)
    return torch.floor(x / step) * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    t = threshold.to(x.dtype).view(-1, 1, 1, 1)
    return torch.where(x < t, x, 255 - x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128) -> torch.Tensor:
    a = add.to(x.dtype).view(-1, 1, 1, 1)
    return torch.where(x < threshold, (x + a).clamp(max=255), x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast (cutoff 0): each channel's [min, max] stretched to [0, 255], truncated."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    scale = 255 / (hi - lo).clamp(min=1)
    out = torch.floor((x - lo) * scale).clamp_(0, 255)
    return torch.where(hi > lo, out, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + count below i) // step, step = (pixels - count of
    the top value) // 255; unchanged where step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top = 255 - torch.argmax((hist.flip(1) > 0).long(), dim=1)  # the largest value present
    step = (h * w - hist.gather(1, top[:, None])) // 255
    below = torch.cumsum(hist, 1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp_(max=255)
    out = lut.gather(1, flat).to(x.dtype).reshape(n, c, h, w)
    return torch.where((step > 0).view(n, c, 1, 1), out, x)


def pil_matrix(name: str, arg: float, size: int) -> tuple[float, ...]:
    """The output-to-input matrix (a, b, c, d, e, f) PIL's transform uses for timm's affine op `name` on a square
    image of `size` px (Image.rotate's for Rotate)."""
    if name == "ShearX":
        return (1, arg, 0, 0, 1, 0)
    if name == "ShearY":
        return (1, 0, 0, arg, 1, 0)
    if name == "TranslateXRel":
        return (1, 0, arg * size, 0, 1, 0)
    if name == "TranslateYRel":
        return (1, 0, 0, 0, 1, arg * size)
    if name == "Rotate":
        angle = -math.radians(arg % 360.0)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        centre = size / 2.0
        return (a, b, a * -centre + b * -centre + centre, -b, a, -b * -centre + a * -centre + centre)
    raise ValueError(f"not an affine op: {name}")


def affine(x: torch.Tensor, matrices: torch.Tensor, mode: str, fill: torch.Tensor) -> torch.Tensor:
    """PIL-style affine transform of each sample by its (n, 6) output-to-input pixel matrix; `fill` (3,) outside."""
    n, _, h, w = x.shape
    a, b, c, d, e, f = matrices.to(x.dtype).unbind(1)
    theta = torch.stack([
        torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], 1),
        torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], 1),
    ], 1)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1, keepdim=True).permute(0, 3, 1, 2)
    out = torch.floor(out + 0.5).clamp_(0, 255)
    return torch.where(inside, out, fill.to(x.dtype).view(1, 3, 1, 1))
