"""The training loader: one item per step per rank, the same global batches whatever the rank/accum split.

Step k: virtual rank v takes the next micro-batch (m samples) of stream (v, k mod W). Rank r owns virtual
ranks [r*A, (r+1)*A). Its DataLoader worker j serves steps k0 + j, k0 + j + W, ... (k0 = first step), so
the DataLoader's in-order round robin delivers steps k0, k0+1, ... Each item:
    {"image": (A*m, 3, H, W) tensor (uint8 from our transforms; with `data.decode: device` a DeviceBatch of
     encoded JPEGs and drawn parameters, the transform's `collate`), "label": int64 (A*m,),
     "key": A*m sample keys, "step": k, "state": the rank's data state after this step,
     "corrupt": corrupt samples skipped so far, "truncated": short shards met so far (this rank)}
Rows [a*m, (a+1)*m) are micro-batch a (virtual rank r*A + a). The trainer keeps the `state` of the last
item it consumed, gathers all ranks' states, and resumes with merge_states(...) of them.

The workers leave SIGTERM, SIGUSR1 and SIGINT to the main process, which checkpoints on a preemption (Slurm, like
`kill -TERM -PGID`, signals every process, the workers too); see pretrain/cluster/preemption.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..cluster.preemption import worker_signals_blocked
from .dataloader import make_dataloader
from .manifest import Manifest
from .rng import preserved_globals
from .sample_stream import SampleStream, StreamState
from .state import check_state, make_state, stream_states
from .streams import StreamLayout, make_layout, rank_virtual_ranks, worker_slot


class _RankSteps(IterableDataset):
    """The steps of one rank; in DataLoader worker j, those with (k - first_step) mod W == j."""

    def __init__(
        self,
        manifest: Manifest,
        layout: StreamLayout,
        virtual_ranks: range,
        first_step: int,
        states: dict[int, StreamState],
        transform: Any,
    ):
        self.shards = manifest.shards
        self.shard_sizes = manifest.shard_sizes
        self.selections = manifest.selections
        self.num_classes = manifest.num_classes
        self.layout = layout
        self.virtual_ranks = virtual_ranks
        self.first_step = first_step
        self.states = states
        self.transform = transform

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        j = info.id if info is not None else 0
        slot = worker_slot(self.first_step, j, self.layout.workers)
        streams = [self._stream(self.layout.stream_id(v, slot)) for v in self.virtual_ranks]
        step = self.first_step + j
        try:
            while True:
                with preserved_globals():
                    images, labels, keys = [], [], []
                    for stream in streams:
                        imgs, labs, ks = stream.take(self.layout.micro_batch)
                        images += imgs
                        labels += labs
                        keys += ks
                state = {s.id: s.state.to_dict() for s in streams}
                yield {
                    "image": getattr(self.transform, "collate", torch.stack)(images),
                    "label": torch.tensor(labels, dtype=torch.int64),
                    "key": keys,
                    "step": step,
                    "state": state,
                }
                step += self.layout.workers
        finally:
            for s in streams:
                s.close()

    def _stream(self, stream_id: int) -> SampleStream:
        return SampleStream(
            stream_id,
            self.layout,
            self.shards,
            self.shard_sizes,
            num_classes=self.num_classes,
            transform=self.transform,
            state=StreamState.from_dict(self.states[stream_id].to_dict()),
            selections=self.selections,
        )


class TrainLoader:
    """An endless iterator over one rank's steps; iterating again continues where it stopped."""

    def __init__(
        self, loader: DataLoader, layout: StreamLayout, first_step: int, states: dict[int, StreamState]
    ):
        self.layout = layout
        self.steps_per_round = layout.steps_per_round
        self.next_step = first_step
        self._loader = loader
        self._iter: Iterator[dict] | None = None
        self._streams = {s: st.to_dict() for s, st in states.items()}

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            with worker_signals_blocked():  # the workers are forked here
                self._iter = iter(self._loader)
        item = next(self._iter)
        if item["step"] != self.next_step:
            raise RuntimeError(f"data loader delivered step {item['step']}, expected {self.next_step}")
        self.next_step += 1
        self._streams.update(item["state"])
        item["state"] = self.state()
        item["corrupt"] = sum(s["corrupt"] for s in self._streams.values())
        item["truncated"] = sum(s["truncated"] for s in self._streams.values())
        return item

    def state(self) -> dict:
        """This rank's data state after the last item delivered."""
        return make_state(self.layout, self.next_step, self._streams)

    def close(self) -> None:
        """Stop the worker processes."""
        self._iter = None


def build_train_loader(
    manifest: Manifest,
    *,
    micro_batch: int,
    accum: int,
    rank: int,
    world_size: int,
    workers: int,
    seed: int,
    transform: Any,
    shuffle_buffer: int,
    state: dict | None = None,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> TrainLoader:
    """The loader of rank `rank`; `state` is merge_states() of all ranks' last states, to resume.

    `workers` is part of the data order (W streams per virtual rank): keep it fixed for a run. Each worker
    holds `accum` shuffle buffers of raw samples: about accum x shuffle_buffer x mean sample bytes of memory.
    """
    layout = make_layout(
        manifest.num_samples,
        micro_batch=micro_batch,
        accum=accum,
        world_size=world_size,
        workers=workers,
        seed=seed,
        subset=manifest.subset,
        shuffle_buffer=shuffle_buffer,
        shards=manifest.digest,
    )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    vranks = rank_virtual_ranks(rank, accum)
    ids = [layout.stream_id(v, w) for v in vranks for w in range(layout.workers)]
    if state is None:
        first_step, states = 0, {s: StreamState() for s in ids}
    else:
        check_state(state, layout)
        first_step, states = int(state["step"]), stream_states(state, ids)
    dataset = _RankSteps(manifest, layout, vranks, first_step, states, transform)
    # Not persistent: the TrainLoader makes one endless iterator, whose workers live as long as it does.
    loader = make_dataloader(dataset, workers=workers, pin_memory=pin_memory, prefetch=prefetch, persistent=False)
    return TrainLoader(loader, layout, first_step, states)
