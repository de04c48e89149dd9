"""`data.decode: device`, the worker side: read the JPEG header and draw every random parameter of the CPU
path's TrainTransform (pretrain/data/transforms.py) from the same global RNGs in the same order, decode nothing.

Per sample, seeded as the CPU path seeds it (sample_stream.py): the crop box on the header's size (`random`),
the resize interpolation (`random`), the flip (torch), the RandAugment ops (NumPy) with each op's skip, magnitude,
sign and affine interpolation (`random`, by timm's own level functions and `_interpolation`), and the erasing box
(`random`) with its noise (torch), which is turned into the region's uint8 pixels here, exactly as the CPU path
writes them. The same seeds give the same parameters, so the data order, the positions and exact resume are the
CPU path's. The main process decodes and augments the batch (pretrain/data/device_augment.py).

A sample that is not a baseline/progressive JPEG in RGB or greyscale, or whose bytes do not end in the JPEG end
marker (truncated: the CPU path would call it corrupt), is decoded and augmented here by the CPU path itself, with
the same draws, so both paths accept, reject and augment it alike.
"""

from __future__ import annotations

import copy
import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import _interpolation
from timm.data.transforms import RandomResizedCropAndInterpolation

from .transforms import TrainTransform, erase_region

AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_RESAMPLE_NAMES = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic",
                   Image.Resampling.NEAREST: "nearest"}
_EOI = b"\xff\xd9"


@dataclass
class Op:
    """One RandAugment op that applies: timm's op name, its level arguments and (affine ops) the interpolation."""

    name: str
    args: tuple
    resample: str | None = None


@dataclass
class Params:
    """A JPEG sample's draws: crop box (left, top, width, height) in the full image, interpolation, flip, ops, and the
    erased region (top, left, uint8 (3, h, w) pixels) or None."""

    size: tuple[int, int]
    box: tuple[int, int, int, int]
    resample: str
    flip: bool
    ops: list[Op]
    erase: tuple[int, int, torch.Tensor] | None


@dataclass
class DeviceBatch:
    """A batch for the main process: all encoded bytes in one uint8 tensor (sample i is data[offsets[i]:
    offsets[i+1]]), per sample its Params, or for a CPU-path sample its finished uint8 (3, S, S) image."""

    data: torch.Tensor
    offsets: list[int]
    samples: list[Params | torch.Tensor]

    def __len__(self) -> int:
        return len(self.samples)

    def pin_memory(self) -> DeviceBatch:
        """The DataLoader's pin_memory hook: the bytes in page-locked memory, for the copy to the decoder."""
        return DeviceBatch(self.data.pin_memory(), self.offsets, self.samples)

    def encoded(self, i: int) -> torch.Tensor:
        return self.data[self.offsets[i]:self.offsets[i + 1]]


def _resample_name(resample: Image.Resampling) -> str:
    try:
        return _RESAMPLE_NAMES[resample]
    except KeyError:
        raise ValueError(f"data.decode device: interpolation {resample!r} is not supported (bilinear, bicubic, "
                         f"nearest, random)") from None


def device_jpeg(img: Image.Image) -> bytes | None:
    """The bytes of a lazy PIL image the device path decodes (an RGB/greyscale JPEG read from memory that ends in
    the end marker), else None."""
    fp = getattr(img, "fp", None)
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or not isinstance(fp, io.BytesIO):
        return None
    data = fp.getvalue()
    return data if data.rstrip(b"\x00\r\n ").endswith(_EOI) else None


class DeviceParamsTransform:
    """The worker side of `data.decode: device` for a TrainTransform `cpu` (its settings and its CPU path for the
    samples the device does not decode). decode() + finish() as the CPU transform's (decode.py drives them);
    collate() makes the loader's batch."""

    def __init__(self, cpu: TrainTransform) -> None:
        self.cpu = cpu
        self.ops = None
        if cpu.randaugment is not None:
            self.ops = [copy.copy(op) for op in cpu.randaugment.ops]
            for op in self.ops:
                op.aug_fn = self._recorder(op.name)
        self._recorded: list[Op] = []

    def _recorder(self, name: str):
        def record(img: Image.Image, *args, **kwargs) -> Image.Image:
            resample = _resample_name(_interpolation(dict(kwargs))) if name in AFFINE_OPS else None
            self._recorded.append(Op(name, tuple(args), resample))
            return img

        return record

    def decode(self, img: Image.Image) -> tuple[Image.Image | None, tuple]:
        """Draw the crop on the header's size; a sample the device cannot decode takes the CPU path's decode."""
        data = device_jpeg(img)
        if data is None:
            return self.cpu.decode(img)
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(img, self.cpu.scale, self.cpu.ratio)
        return None, (data, img.size, (left, top, w, h))

    def finish(self, img: Image.Image | None, ctx: tuple) -> tuple[bytes, Params] | torch.Tensor:
        """The rest of the draws, in the CPU path's order (TrainTransform.finish)."""
        if img is not None:
            return self.cpu.finish(img, ctx)
        data, size, box = ctx
        c = self.cpu
        resample = random.choice(c.interpolations) if len(c.interpolations) > 1 else c.interpolations[0]
        flip = c.hflip > 0 and torch.rand(1).item() < c.hflip
        ops: list[Op] = []
        if self.ops is not None:
            self._recorded = ops
            for op in np.random.choice(self.ops, c.randaugment.num_layers, replace=True):
                op(None)
        erase = None
        if c.random_erasing > 0 and random.random() < c.random_erasing:
            erase = erase_region(c.img_size, c.img_size, c.mean, c.std)
        return data, Params(size, box, _resample_name(resample), bool(flip), ops, erase)

    @staticmethod
    def collate(samples: list) -> DeviceBatch:
        """One DeviceBatch of finish()'s outputs (a few shared-memory tensors, not one per sample)."""
        chunks, offsets, out = [], [0], []
        for s in samples:
            if isinstance(s, torch.Tensor):
                out.append(s)
                offsets.append(offsets[-1])
            else:
                chunks.append(s[0])
                out.append(s[1])
                offsets.append(offsets[-1] + len(s[0]))
        joined = bytearray(b"".join(chunks))
        data = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
        return DeviceBatch(data, offsets, out)
