"""What monitoring costs a training step: peak measurement, scalar and image logging, weight pictures.

    .venv/bin/python -m benchmarks.bench_monitor
"""

import statistics
import tempfile
import time

import timm
import torch

from pretrain.telemetry.memory import memory_stats
from pretrain.telemetry.mfu import forward_flops_per_image, measure_peak_flops
from pretrain.telemetry.monitor import Monitor
from pretrain.telemetry.weight_images import stem_filters_image, token_mixing_image


def _per_call(fn, repeats: int) -> float:
    """Median seconds per call: on a shared machine a mean would report the neighbours' stalls."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        peak = measure_peak_flops("cpu", dtype)
        seconds = time.perf_counter() - start
        print(f"measure_peak_flops(cpu, {dtype}): {peak / 1e9:.1f} GFLOP/s in {seconds:.2f} s")
    model = timm.create_model("mixer_b16_224", pretrained=False)
    start = time.perf_counter()
    flops = forward_flops_per_image(model, 224)
    seconds = time.perf_counter() - start
    print(f"forward_flops_per_image(Mixer-B/16, 224): {flops / 1e9:.2f} GFLOP in {seconds:.2f} s")
    print(f"token_mixing_image(Mixer-B/16, blocks 0-1, 64 units): "
          f"{_per_call(lambda: token_mixing_image(model), 20) * 1e3:.1f} ms")
    print(f"stem_filters_image(Mixer-B/16): {_per_call(lambda: stem_filters_image(model), 20) * 1e3:.1f} ms")
    print(f"memory_stats(cpu): {_per_call(lambda: memory_stats('cpu'), 1000) * 1e6:.1f} us")
    scalars = {f"train/s{i}": float(i) for i in range(10)}
    image = token_mixing_image(model)
    with tempfile.TemporaryDirectory() as run_dir, Monitor(run_dir, rank=0, total_steps=10**6) as monitor:
        step = iter(range(10**6))
        per_call = _per_call(lambda: monitor.log_scalars(next(step), scalars), 1000)
        print(f"Monitor.log_scalars(10 scalars): {per_call * 1e6:.0f} us")
        print(f"Monitor.log_image({tuple(image.shape)}): "
              f"{_per_call(lambda: monitor.log_image('w', next(step), image), 50) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
