"""Memory scalars: resident set on a CPU, peak allocator figures on a GPU."""

import numpy as np
import torch

from pretrain.telemetry import memory
from pretrain.telemetry.memory import memory_stats, rss_bytes


def test_cpu_reports_resident_set_that_grows_with_allocations():
    before = rss_bytes()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched, so resident
    stats = memory_stats("cpu")
    assert list(stats) == ["sys/rss_bytes"]
    assert stats["sys/rss_bytes"] - before >= 60 * 2**20
    del block


def test_gpu_reports_peak_allocated_and_reserved(monkeypatch):
    monkeypatch.setattr(memory.torch.cuda, "max_memory_allocated", lambda device: 123)
    monkeypatch.setattr(memory.torch.cuda, "max_memory_reserved", lambda device: 456)
    stats = memory_stats(torch.device("cuda", 0))
    assert stats == {"sys/max_mem_allocated": 123.0, "sys/max_mem_reserved": 456.0}
