"""Memory scalars: resident set on a CPU, peak allocator figures on a GPU."""

import mmap

import torch

from pretrain.telemetry import memory
from pretrain.telemetry.memory import memory_stats, rss_bytes


def test_cpu_reports_resident_set_that_grows_with_allocations():
    before = rss_bytes()
    block = mmap.mmap(-1, 64 * 2**20)  # fresh pages (malloc may reuse resident ones in a long-lived process)
    block.write(b"\1" * len(block))  # touched, so resident
    stats = memory_stats("cpu")
    assert list(stats) == ["sys/rss_bytes"]
    assert stats["sys/rss_bytes"] - before >= 60 * 2**20
    block.close()


def test_gpu_reports_peak_allocated_and_reserved(monkeypatch):
    monkeypatch.setattr(memory.torch.cuda, "max_memory_allocated", lambda device: 123)
    monkeypatch.setattr(memory.torch.cuda, "max_memory_reserved", lambda device: 456)
    stats = memory_stats(torch.device("cuda", 0))
    assert stats == {"sys/max_mem_allocated": 123.0, "sys/max_mem_reserved": 456.0}
