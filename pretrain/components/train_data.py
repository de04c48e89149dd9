"""The training data of one rank as a run component: shards (or a subset of them), augmentation, the loader, and
the data position it owns (gathered from every rank and merged when saved, so a resume may change the world size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.cluster.distributed import DistEnv, gather
from pretrain.config import PretrainConfig
from pretrain.data import TrainLoader, build_train_loader, load_manifest, merge_states, subset_manifest, train_transform
from pretrain.data.device_augment import DeviceAugment
from pretrain.data.device_params import DeviceParamsTransform


class TrainData:
    """One rank's endless stream of training steps, each a dict of `accum` micro-batches (see train_loader.py)."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv, run_dir: Path, accum: int) -> None:
        self.cfg, self.env, self.accum = cfg, env, accum
        full = load_manifest(cfg.data.train)
        self.full_samples = full.num_samples
        self.manifest = subset_manifest(full, cfg.data.subset_fraction, cfg.data.subset_seed, run_dir / "data",
                                        env.rank)
        self.position: dict[str, Any] | None = None  # this rank's state after the last step (or the resumed one)
        self.corrupt = self.short_shards = 0  # met by this rank's streams so far (carried in their positions)
        self._loader: TrainLoader | None = None
        self._augment: DeviceAugment | None = None  # data.decode device: decodes and augments each batch

    def __iter__(self) -> TrainData:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._loader is None:
            self._loader = self._build()
        item = next(self._loader)
        if self._augment is not None:
            item["image"] = self._augment(item["image"])
        self.position, self.corrupt, self.short_shards = item["state"], item["corrupt"], item["truncated"]
        return item

    def _build(self) -> TrainLoader:
        c, a = self.cfg, self.cfg.augment
        transform = train_transform(c.model.img_size, scale=a.scale, ratio=a.ratio, hflip=a.hflip,
                                    randaugment=a.randaugment, random_erasing=a.random_erasing, mean=a.mean,
                                    std=a.std, jpeg_decoder=c.data.jpeg_decoder)
        if c.data.decode == "device":
            transform = DeviceParamsTransform(transform)
            self._augment = DeviceAugment(c.model.img_size, a.mean, self.env.device)
        return build_train_loader(
            self.manifest, micro_batch=c.train.micro_batch, accum=self.accum, rank=self.env.rank,
            world_size=self.env.world_size, workers=c.data.workers, seed=c.train.seed, transform=transform,
            shuffle_buffer=c.data.shuffle_buffer, state=self.position, pin_memory=self.env.device.type == "cuda",
            prefetch=c.data.prefetch)

    def state_dict(self) -> dict[str, Any] | None:
        """Every rank's position merged into one (a collective: every rank calls it)."""
        states = gather(self.position)
        return merge_states(states) if states[0] is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.position = state  # the loader is built from it at the first step

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None


def skipped_samples(data: TrainData, device: torch.device) -> tuple[int, int]:
    """Corrupt samples skipped and short shards met by every rank so far (a collective)."""
    counts = torch.tensor([data.corrupt, data.short_shards], dtype=torch.int64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return int(counts[0]), int(counts[1])
