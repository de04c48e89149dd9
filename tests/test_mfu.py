"""MFU arithmetic, the peak table lookup, the matmul peak measurement and the FLOP counter."""

import time

import pytest
import timm
import torch

from pretrain.telemetry.mfu import (
    PEAK_FLOPS,
    device_model,
    forward_flops_per_image,
    measure_peak_flops,
    mfu,
    peak_flops,
)


def test_mfu_is_three_forwards_over_all_devices_peak():
    assert mfu(1e9, 1000.0, 8, 1e12) == 0.375  # 3 * 1e9 * 1000 / (8 * 1e12)
    assert mfu(2e9, 500.0, 1, 989.4e12) == 3 * 2e9 * 500.0 / 989.4e12


@pytest.mark.parametrize(("world_size", "peak"), [(0, 1e12), (1, 0.0)])
def test_mfu_refuses_impossible_inputs(world_size, peak):
    with pytest.raises(ValueError, match=r"^need world_size >= 1 and a peak > 0"):
        mfu(1e9, 1.0, world_size, peak)


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_device_names_map_to_table_rows(name, model):
    assert device_model(name) == model


def test_table_holds_the_data_sheet_figures():
    assert PEAK_FLOPS["H100-SXM"][torch.bfloat16] == 989.4e12
    assert PEAK_FLOPS["H200"][torch.bfloat16] == 989.4e12
    assert PEAK_FLOPS["A100"][torch.bfloat16] == 312e12
    assert PEAK_FLOPS["A100"][torch.float32] == 19.5e12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_peak_is_measured_in_under_a_second(dtype):
    start = time.perf_counter()
    value, source = peak_flops("cpu", dtype)
    assert time.perf_counter() - start < 1.0
    assert source == "measured" and value > 1e9  # any CPU does more than 1 GFLOP/s on a 1024^3 matmul


def test_measure_peak_flops_respects_its_budget():
    start = time.perf_counter()
    assert measure_peak_flops(torch.device("cpu"), torch.float32, seconds=0.05) > 0
    assert time.perf_counter() - start < 0.5


def test_flop_counter_matches_the_mixer_formula():
    model = timm.models.mlp_mixer.MlpMixer(
        num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=24
    )
    tokens, channels, d_s, d_c, patch_in = 16, 24, 12, 96, 3 * 8 * 8
    stem = 2 * tokens * channels * patch_in
    block = 2 * (2 * channels * tokens * d_s) + 2 * (2 * tokens * channels * d_c)
    head = 2 * channels * 10
    assert forward_flops_per_image(model, 32) == stem + 2 * block + head == 479712
    assert forward_flops_per_image(model, (32, 32)) == 479712
