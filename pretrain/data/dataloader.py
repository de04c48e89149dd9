"""The DataLoader set-up the training and evaluation loaders share: one item per iteration (the datasets batch
themselves), workers that leave the preemption signals to their rank (pretrain/cluster/preemption.py), and a private
generator, so that creating an iterator draws no number from torch's global RNG."""

from __future__ import annotations

from torch import Generator
from torch.utils.data import DataLoader, IterableDataset

from ..cluster.preemption import shield_worker


def make_dataloader(
    dataset: IterableDataset, *, workers: int, pin_memory: bool, prefetch: int, persistent: bool
) -> DataLoader:
    """A DataLoader over `dataset` in `workers` processes (0: in this process), `prefetch` items ahead per worker;
    `persistent` keeps the workers between passes."""
    if workers < 0 or prefetch < 1:
        raise ValueError(f"need workers >= 0 and prefetch >= 1, got {workers} and {prefetch}")
    extra = dict(persistent_workers=persistent, prefetch_factor=prefetch) if workers > 0 else {}
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, generator=Generator(),
                      worker_init_fn=shield_worker, **extra)
