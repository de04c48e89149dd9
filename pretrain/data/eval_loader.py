"""The evaluation loader: every sample exactly once across all ranks, no padding, no duplicates.

The unshuffled concatenation of the shards is cut into world_size x W contiguous parts whose sizes differ
by at most one; DataLoader worker w of rank r reads part r * W + w. Ranks may yield different numbers of
batches (the evaluator all-reduces its sums once at the end). Corrupt samples and short shards are skipped,
counted and, after each pass, available as `EvalLoader.corrupt` / `.truncated` (and logged).

Each batch also carries the samples' source file names (`batch["source"]`): the basename of the `path` in
the sample's `json` member as data_prep writes it (e.g. "ILSVRC2012_val_00000001.JPEG"), "" where a sample
has no json member or its json has no string `path`; a json member that is not JSON makes the sample corrupt.
ImageNet-ReaL labels are looked up by this name (data_prep renumbers the keys).

The workers leave SIGTERM, SIGUSR1 and SIGINT to the main process, as the training loader's do
(pretrain/cluster/preemption.py): a preemption during an evaluation must not kill them.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..cluster.preemption import worker_signals_blocked
from .dataloader import make_dataloader
from .decode import CorruptSample, decode_sample
from .manifest import Manifest
from .shard_reader import read_pieces
from .streams import eval_pieces

log = logging.getLogger(__name__)


def _sample_source(raw: dict) -> str:
    """The source file name of a raw sample: basename of its json member's `path`, else ""."""
    data = raw.get("json")
    if data is None:
        return ""
    try:
        meta = json.loads(data)
    except ValueError:
        raise CorruptSample(f"json member is not JSON: {data[:20]!r}") from None
    path = meta.get("path") if isinstance(meta, dict) else None
    return posixpath.basename(path) if isinstance(path, str) else ""


class _RankParts(IterableDataset):
    """Batches of one rank's parts: worker j reads part rank * W + j, then a count of what it skipped."""

    def __init__(
        self, manifest: Manifest, rank: int, world_size: int, workers: int, batch_size: int, transform: Any
    ):
        self.urls = [s.url for s in manifest.shards]
        self.shard_sizes = manifest.shard_sizes
        self.selections = manifest.selections
        self.num_classes = manifest.num_classes
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.batch_size = batch_size
        self.transform = transform

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        j = info.id if info is not None else 0
        pieces = eval_pieces(self.shard_sizes, self.rank * self.workers + j, self.world_size * self.workers)
        skipped = {"corrupt": 0, "truncated": 0}

        def on_truncated(url: str, reason: str) -> None:
            skipped["truncated"] += 1
            log.warning("eval shard %s %s", url, reason)

        images, labels, keys, sources = [], [], [], []
        for raw in read_pieces(self.urls, pieces, on_truncated, self.selections):
            try:
                source = _sample_source(raw)
                image, label = decode_sample(raw, self.transform, self.num_classes)
            except CorruptSample as exc:
                skipped["corrupt"] += 1
                log.warning(
                    "eval: skipping corrupt sample %s in %s: %s", raw.get("__key__"), raw.get("__url__"), exc
                )
                continue
            images.append(image)
            labels.append(label)
            keys.append(raw["__key__"])
            sources.append(source)
            if len(images) == self.batch_size:
                yield _batch(images, labels, keys, sources)
                images, labels, keys, sources = [], [], [], []
        if images:
            yield _batch(images, labels, keys, sources)
        yield {"skipped": skipped}


def _batch(images: list[torch.Tensor], labels: list[int], keys: list[str], sources: list[str]) -> dict:
    labels_tensor = torch.tensor(labels, dtype=torch.int64)
    return {"image": torch.stack(images), "label": labels_tensor, "key": keys, "source": sources}


class EvalLoader:
    """Iterable over one rank's eval batches ({"image", "label", "key", "source"}); re-iterable, one pass each."""

    def __init__(self, loader: DataLoader, num_samples: int):
        self._loader = loader
        self.num_samples = num_samples  # samples this rank reads, corrupt ones included
        self.corrupt = 0
        self.truncated = 0

    def __iter__(self) -> Iterator[dict]:
        self.corrupt = self.truncated = 0
        with worker_signals_blocked():  # the (persistent) workers are forked by the first pass
            items = iter(self._loader)
        for item in items:
            if "skipped" in item:
                self.corrupt += item["skipped"]["corrupt"]
                self.truncated += item["skipped"]["truncated"]
                continue
            yield item
        if self.corrupt or self.truncated:
            log.warning(
                "eval pass skipped %d corrupt samples and met %d short shards", self.corrupt, self.truncated
            )


def build_eval_loader(
    manifest: Manifest,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    workers: int,
    transform: Any,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> EvalLoader:
    """The eval loader of rank `rank` (workers=0 reads in the main process)."""
    if batch_size < 1 or world_size < 1 or workers < 0 or prefetch < 1:
        raise ValueError(
            f"need batch_size >= 1, world_size >= 1, workers >= 0, prefetch >= 1; "
            f"got {batch_size}, {world_size}, {workers}, {prefetch}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    parts = max(workers, 1)
    dataset = _RankParts(manifest, rank, world_size, parts, batch_size, transform)
    num_samples = sum(
        p.count
        for j in range(parts)
        for p in eval_pieces(manifest.shard_sizes, rank * parts + j, world_size * parts)
    )
    loader = make_dataloader(dataset, workers=workers, pin_memory=pin_memory, prefetch=prefetch, persistent=True)
    return EvalLoader(loader, num_samples)
