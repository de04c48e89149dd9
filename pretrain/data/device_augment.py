"""`data.decode: device`, the main-process side: a DeviceBatch (pretrain/data/device_params.py: encoded JPEGs and
the random parameters the workers drew) -> uint8 (N, 3, S, S) on the device, as the CPU path's TrainTransform
would have made it from the same draws.

Steps: one batched `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on CUDA); per sample the crop of the
full-size image and an antialiased resize (`F.interpolate(antialias=True)`, which follows PIL's resampling filters)
rounded to integers; the flips as one indexed flip; per RandAugment layer each op on the samples that drew it,
with their per-sample arguments (pretrain/data/device_ops.py; the affine ops of a layer as one grid_sample per
interpolation); the erased regions pasted as drawn. Normalisation stays in DevicePreprocess, as for the CPU path.

Differences from the CPU path: the CPU path decodes at a JPEG DCT reduction when the crop allows it and this path
always decodes at full size (the resize's antialiasing filter does the reduction), and nvJPEG's IDCT is not
libjpeg's: pixels differ by a few levels, not in distribution (tests/test_device_augment.py). A JPEG that the
device decoder rejects though its header read (rare: damage inside the entropy-coded data) is decoded by
torchvision on the CPU; if that fails too it becomes an image of the fill colour, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from . import device_ops as ops
from .device_params import AFFINE_OPS, DeviceBatch, Params

log = logging.getLogger(__name__)

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}
_COLOUR = {
    "Brightness": ops.brightness, "BrightnessIncreasing": ops.brightness,
    "Color": ops.color, "ColorIncreasing": ops.color,
    "Contrast": ops.contrast, "ContrastIncreasing": ops.contrast,
    "Sharpness": ops.sharpness, "SharpnessIncreasing": ops.sharpness,
    "Posterize": ops.posterize, "PosterizeIncreasing": ops.posterize, "PosterizeOriginal": ops.posterize,
    "Solarize": ops.solarize, "SolarizeIncreasing": ops.solarize,
    "SolarizeAdd": ops.solarize_add,
}
_NO_ARGS = {"AutoContrast": ops.autocontrast, "Equalize": ops.equalize, "Invert": ops.invert}


class DeviceAugment:
    """DeviceBatch -> uint8 (N, 3, img_size, img_size) on `device`; `fill` is RandAugment's fill colour (the mean
    colour as uint8, as timm's img_mean)."""

    def __init__(self, img_size: int, mean: Sequence[float], device: torch.device | str) -> None:
        self.img_size = int(img_size)
        self.device = torch.device(device)
        self.fill = torch.tensor([min(255, round(255 * m)) for m in mean], dtype=torch.float32, device=self.device)

    def __call__(self, batch: DeviceBatch) -> torch.Tensor:
        jpegs = [i for i, s in enumerate(batch.samples) if isinstance(s, Params)]
        out = torch.empty((len(batch), 3, self.img_size, self.img_size), dtype=torch.float32, device=self.device)
        for i, s in enumerate(batch.samples):
            if not isinstance(s, Params):  # a sample the CPU path finished in the worker
                out[i] = s.to(self.device, non_blocking=True)
        if jpegs:
            params = [batch.samples[i] for i in jpegs]
            decoded = self.decode([batch.encoded(i) for i in jpegs])
            x = torch.stack([self.crop_resize(img, p) for img, p in zip(decoded, params, strict=True)])
            x = self.flip(x, params)
            x = self.randaugment(x, params)
            out[jpegs] = x
            for i, p in zip(jpegs, params, strict=True):
                if p.erase is not None:
                    top, left, pixels = p.erase
                    out[i, :, top:top + pixels.shape[1], left:left + pixels.shape[2]] = pixels.to(self.device)
        return out.to(torch.uint8)

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 (3, H, W) RGB images on the device, batched; per sample where the batch call fails."""
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return [self._decode_one(e) for e in encoded]

    def _decode_one(self, encoded: torch.Tensor) -> torch.Tensor | None:
        for device in (self.device, torch.device("cpu")):
            try:
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device).to(self.device)
            except RuntimeError as exc:
                reason = exc
        log.warning("data.decode device: a JPEG does not decode (%s); it trains as the fill colour", reason)
        return None

    def crop_resize(self, img: torch.Tensor | None, p: Params) -> torch.Tensor:
        """The crop box resized to img_size (antialiased), rounded: float (3, S, S) of integers."""
        s = self.img_size
        if img is None or tuple(img.shape[1:]) != (p.size[1], p.size[0]):
            if img is not None:
                log.warning("data.decode device: decoded %s, header says %s; it trains as the fill colour",
                            tuple(img.shape[1:]), p.size[::-1])
            return self.fill.view(3, 1, 1).expand(3, s, s).clone()
        left, top, w, h = p.box
        crop = img[:, top:top + h, left:left + w].float()[None]
        mode = _MODES[p.resample]
        if mode == "nearest":
            return F.interpolate(crop, size=(s, s), mode="nearest-exact")[0]
        out = F.interpolate(crop, size=(s, s), mode=mode, antialias=True, align_corners=False)[0]
        return torch.floor(out + 0.5).clamp_(0, 255)

    @staticmethod
    def flip(x: torch.Tensor, params: list[Params]) -> torch.Tensor:
        idx = [i for i, p in enumerate(params) if p.flip]
        if idx:
            x[idx] = x[idx].flip(-1)
        return x

    def randaugment(self, x: torch.Tensor, params: list[Params]) -> torch.Tensor:
        """Layer by layer (op l of every sample, in the order drawn), each op once on the samples that drew it."""
        layers = max((len(p.ops) for p in params), default=0)
        for layer in range(layers):
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(params):
                if layer < len(p.ops):
                    groups.setdefault(p.ops[layer].name, []).append(i)
            # Samples skip an op (p < 1) without a placeholder, so "layer" is the k-th op that applied: the ops of
            # one sample still run in their drawn order, and samples are independent.
            affine: dict[str, list[int]] = {}
            for name, idx in groups.items():
                if name in AFFINE_OPS:
                    for i in idx:
                        affine.setdefault(params[i].ops[layer].resample, []).append(i)
                elif name in _NO_ARGS:
                    x[idx] = _NO_ARGS[name](x[idx])
                elif name in _COLOUR:
                    arg = torch.tensor([params[i].ops[layer].args[0] for i in idx], dtype=x.dtype, device=x.device)
                    x[idx] = _COLOUR[name](x[idx], arg)
                else:
                    raise ValueError(f"data.decode device: RandAugment op {name} has no device version")
            for resample, idx in affine.items():
                matrices = torch.tensor(
                    [ops.pil_matrix(params[i].ops[layer].name, params[i].ops[layer].args[0], self.img_size)
                     for i in idx], dtype=torch.float64)
                x[idx] = ops.affine(x[idx], matrices.to(x.device), _MODES[resample], self.fill)
        return x
