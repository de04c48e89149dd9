"""JPEG decode per image, the candidates for the transforms' decode step side by side (CPU time, one thread).

Each image gets a RandomResizedCrop box drawn on its header's size (scale 0.08-1, ratio 3/4-4/3, as training
does) and the reduction 1/s (1, 2, 4, 8) that keeps the crop >= --size; each candidate returns the crop's pixels:
  pil            PIL draft at 1/s, load, crop (the PIL path, data.jpeg_decoder pil)
  turbo          pretrain.data.jpeg_turbo: simplejpeg (libjpeg-turbo) at 1/s, crop (data.jpeg_decoder turbo)
  pyturbojpeg    the whole image at 1/s by PyTurboJPEG (if importable, with Debian's libturbojpeg0), crop
  pyturbojpeg-roi  PyTurboJPEG's lossless crop to the MCU-aligned window, then decoded at 1/s: the crop only
Rounds are interleaved (the machine may be shared); the best round per candidate is reported.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_jpeg_decode [--long-side 500 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from collections.abc import Callable

from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from benchmarks.bench_input import make_jpegs
from pretrain.data.jpeg_turbo import decode_window, reduction_for

Box = tuple[int, int, int, int]  # left, top, width, height


def pil(data: bytes, box: Box, s: int) -> Image.Image:
    left, top, w, h = box
    img = Image.open(io.BytesIO(data))
    if s > 1:
        img.draft(None, (img.size[0] // s, img.size[1] // s))
    img.load()
    return img.crop((left // s, top // s, (left + w) // s, (top + h) // s))


def turbo(data: bytes, box: Box, s: int) -> Image.Image | None:
    left, top, w, h = box
    return decode_window(Image.open(io.BytesIO(data)), s, (left // s, top // s, (left + w) // s, (top + h) // s))


def pyturbojpeg_candidates() -> dict[str, Callable]:
    """PyTurboJPEG's two ways, where it and its system library load (PyTurboJPEG < 2 for libjpeg-turbo 2.x)."""
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"pyturbojpeg: not measured ({type(exc).__name__}: {exc})")
        return {}

    def whole(data: bytes, box: Box, s: int):
        left, top, w, h = box
        rgb = jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, s) if s > 1 else None)
        return rgb[top // s : (top + h) // s, left // s : (left + w) // s]

    def roi(data: bytes, box: Box, s: int):
        left, top, w, h = box
        cropped = jpeg.crop(data, left, top, w, h)  # origin moved down to the MCU grid, lossless
        return jpeg.decode(cropped, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, s) if s > 1 else None)

    return {"pyturbojpeg": whole, "pyturbojpeg-roi": roi}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="output side, px (default 224)")
    parser.add_argument("--long-side", type=int, nargs="+", default=[500, 1000])
    args = parser.parse_args(argv)
    candidates = {"pil": pil, "turbo": turbo, **pyturbojpeg_candidates()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("\n| long side | reduced crops | " + " | ".join(f"{n} ms/img" for n in candidates) + " |")
    print("| --- | --- |" + " --- |" * len(candidates))
    random.seed(0)
    for side in args.long_side:
        jpegs = make_jpegs(args.images, side)
        boxes = []
        for data in jpegs:
            top, left, h, w = RandomResizedCropAndInterpolation.get_params(
                Image.open(io.BytesIO(data)), (0.08, 1.0), (3 / 4, 4 / 3)
            )
            boxes.append(((left, top, w, h), reduction_for(min(w, h) / args.size)))
        best = dict.fromkeys(candidates, float("inf"))
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                t0 = time.process_time()
                for data, (box, s) in zip(jpegs, boxes, strict=True):
                    fn(data, box, s)
                best[name] = min(best[name], (time.process_time() - t0) / len(jpegs) * 1e3)
        reduced = sum(s > 1 for _, s in boxes)
        print(f"| {side} px | {reduced}/{len(boxes)} | " + " | ".join(f"{best[n]:.2f}" for n in candidates) + " |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
