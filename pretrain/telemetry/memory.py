"""Memory in use, as monitor scalars: peak GPU memory on a GPU, this process's resident set on a CPU."""

from __future__ import annotations

import os
import resource

import torch


def rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``; peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_stats(device: torch.device | str) -> dict[str, float]:
    """``sys/max_mem_allocated`` and ``sys/max_mem_reserved`` (bytes) on a GPU, ``sys/rss_bytes`` on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "sys/max_mem_allocated": float(torch.cuda.max_memory_allocated(device)),
            "sys/max_mem_reserved": float(torch.cuda.max_memory_reserved(device)),
        }
    return {"sys/rss_bytes": float(rss_bytes())}
