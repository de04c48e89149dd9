"""Model FLOPs utilisation: the share of the devices' peak that the training step achieves.

A training step costs three forward passes (forward, and a backward of twice the forward). Peaks are the
vendors' dense (no sparsity) tensor-core figures; a GPU not in the table and every CPU get a peak measured
once by timing a matmul in the run's precision (:func:`measure_peak_flops`).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAIN_FLOPS_PER_FORWARD = 3

# Dense FLOP/s per device from NVIDIA's data sheets; "float32" is the non-tensor-core rate (TF32 off).
PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H100-SXM": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.float32: 66.9e12},
    "H100-PCIe": {torch.bfloat16: 756.5e12, torch.float16: 756.5e12, torch.float32: 51.2e12},
    "H200": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.float32: 66.9e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
}


def device_model(name: str) -> str | None:
    """The :data:`PEAK_FLOPS` key for a CUDA device name such as ``NVIDIA H100 80GB HBM3``, or None."""
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100-PCIe" if "PCIE" in name.upper() else "H100-SXM"
    for key in ("A100", "V100"):
        if key in name:
            return key
    return None


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Best matmul FLOP/s seen in about ``seconds`` of square matmuls on ``device`` in ``dtype``."""
    device = torch.device(device)
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm-up: kernel selection, thread pool start
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device | str, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s of one device in ``dtype``, and its source: ``table:<model>`` or ``measured``."""
    device = torch.device(device)
    if device.type == "cuda":
        model = device_model(torch.cuda.get_device_name(device))
        if model is not None and dtype in PEAK_FLOPS[model]:
            return PEAK_FLOPS[model][dtype], f"table:{model}"
    return measure_peak_flops(device, dtype), "measured"


def mfu(
    flops_per_image_fwd: float, images_per_sec: float, world_size: int, peak_flops_per_device: float
) -> float:
    """Fraction of ``world_size`` devices' peak used; ``images_per_sec`` is the rate over all devices."""
    if world_size < 1 or peak_flops_per_device <= 0:
        raise ValueError(f"need world_size >= 1 and a peak > 0, got {world_size} and {peak_flops_per_device}")
    achieved = TRAIN_FLOPS_PER_FORWARD * flops_per_image_fwd * images_per_sec
    return achieved / (world_size * peak_flops_per_device)


def forward_flops_per_image(
    model: torch.nn.Module, image_size: int | tuple[int, int], in_chans: int = 3
) -> int:
    """FLOPs of a forward pass of one image, counted (matmuls, convolutions) by torch's FlopCounterMode.

    The pass runs in eval mode (no dropout, no batch-norm statistics update) with the random streams restored
    afterwards, and buffers a model rebuilds in its forward (ConViT's relative indices, made in the dtype of the
    moment) are put back, so the model and the run's random numbers are as they were.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    param = next(model.parameters())
    image = torch.zeros(1, in_chans, height, width, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    training, buffers = model.training, dict(model.named_buffers())
    devices = [param.device] if param.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), counter:
            model.eval()
            model(image)
    finally:
        model.train(training)
        for name, buffer in buffers.items():
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, buffer)
    return counter.get_total_flops()
