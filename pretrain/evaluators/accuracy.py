"""Exact classification metrics over a (distributed) evaluation set, ImageNet-ReaL labels, metric files.

Each rank accumulates integer counts and a float64 loss sum over the samples it saw; ``all_reduce``
sums them over ranks, so the merged result is the single-process result with every sample counted
once. When sample keys are given, a key seen twice (on one rank, or on two ranks, e.g. from a padding
sampler) is an error instead of a silently biased metric.

ImageNet-ReaL (Beyer et al. 2020) ships ``real.json``: a list over the 50,000 validation images in
``ILSVRC2012_val_00000001.JPEG`` order of lists of acceptable labels; an empty list excludes that image
from the ReaL metric. data_prep renumbers the sample keys, so samples are looked up by their source file
name (the eval loader's ``batch["source"]``) in ``load_real_labels(path)``'s table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fileio.atomic import atomic_write_json

REAL_FILE_NAME = "ILSVRC2012_val_{:08d}.JPEG"
REAL_KEY_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")


class EvalAccumulator:
    """Top-1, top-5, mean cross-entropy, per-class and ReaL accuracy, summed exactly over batches and ranks.

    ``real_labels`` maps names to ReaL label lists (see ``load_real_labels``); when given, every ``update``
    needs ``sources`` (samples are looked up by source file name) or else ``keys`` (looked up by key).
    Samples with an empty list count everywhere except in ``real_num_samples`` and ``real_top1``.
    "top5" is top-``min(5, num_classes)``.
    """

    def __init__(self, num_classes: int, real_labels: Mapping[str, Sequence[int]] | None = None) -> None:
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.real_labels = real_labels
        self.loss_sum = 0.0
        self.correct_top1 = 0
        self.correct_topk = 0
        self.real_samples = 0
        self.real_correct = 0
        self.class_samples = np.zeros(num_classes, dtype=np.int64)
        self.class_correct = np.zeros(num_classes, dtype=np.int64)
        self.keys: set[str] = set()
        self.keyed: bool | None = None
        self.reduced = False

    @property
    def num_samples(self) -> int:
        return int(self.class_samples.sum())

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        keys: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
    ) -> None:
        """Add a batch: ``logits [B, num_classes]``, integer ``labels [B]``, optional sample ``keys`` and
        source file names ``sources`` (the eval loader's ``batch["key"]`` and ``batch["source"]``)."""
        if self.reduced:
            raise RuntimeError("update() after all_reduce(): the counts are already merged over ranks")
        logits, labels = logits.detach(), labels.detach()
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [B, {self.num_classes}] and labels [B], got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}"
            )
        labels = labels.long()
        label_array = labels.cpu().numpy()
        if label_array.size and (label_array.min() < 0 or label_array.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {label_array.min()}..{label_array.max()}"
            )
        self._add_keys(keys, len(labels), need_keys=self.real_labels is not None and sources is None)
        if sources is not None and len(sources) != len(labels):
            raise ValueError(f"got {len(sources)} source names for a batch of {len(labels)}")
        loss = F.cross_entropy(logits.double(), labels, reduction="sum")
        top = logits.topk(self.top_k, dim=1).indices
        hits = (top == labels[:, None]).cpu()
        self.loss_sum += float(loss)
        self.correct_top1 += int(hits[:, 0].sum())
        self.correct_topk += int(hits.any(dim=1).sum())
        self.class_samples += np.bincount(label_array, minlength=self.num_classes)
        self.class_correct += np.bincount(label_array[hits[:, 0].numpy()], minlength=self.num_classes)
        if self.real_labels is not None:
            self._add_real(top[:, 0].cpu().tolist(), keys, sources)

    def _add_keys(self, keys: Sequence[str] | None, batch_size: int, need_keys: bool) -> None:
        if need_keys and keys is None:
            raise ValueError("ReaL labels were given, so update() needs the sample keys")
        if self.keyed is not None and self.keyed != (keys is not None):
            raise ValueError("give sample keys with every batch or with none")
        self.keyed = keys is not None
        if keys is None:
            return
        if len(keys) != batch_size:
            raise ValueError(f"got {len(keys)} keys for a batch of {batch_size}")
        for key in keys:
            if key in self.keys:
                raise ValueError(f"sample {key!r} was counted twice")
            self.keys.add(key)

    def _add_real(self, predictions: list[int], keys: Sequence[str] | None, sources: Sequence[str] | None) -> None:
        names = keys if sources is None else sources
        for i, (name, prediction) in enumerate(zip(names, predictions, strict=True)):
            valid = self.real_labels.get(name)
            if valid is None:
                raise ValueError(self._not_in_table(i, keys, sources))
            if len(valid):
                self.real_samples += 1
                self.real_correct += int(prediction in valid)

    def _not_in_table(self, i: int, keys: Sequence[str] | None, sources: Sequence[str] | None) -> str:
        if sources is None:
            return f"no ReaL labels for sample {keys[i]!r}"
        sample = f"sample {keys[i]!r}" if keys is not None else "a sample"
        example = next(iter(self.real_labels), "")
        table = f"the ReaL table ({len(self.real_labels)} images, named like {example!r})"
        if not sources[i]:
            return (
                f"{sample} has no source file name (its shard has no json member with a path), so it cannot be "
                f"looked up in {table}; build the shards with data_prep"
            )
        return f"{sample} (source file {sources[i]!r}) is not in {table}"

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op without a process group); call once, on every rank.

        With sample keys, also checks that no sample was evaluated on two ranks.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.reduced:
            raise RuntimeError("all_reduce() was already called: the counts would be summed twice")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        counts = [
            self.correct_top1,
            self.correct_topk,
            self.real_samples,
            self.real_correct,
            int(bool(self.keyed)),
        ]
        packed = torch.tensor(
            counts + self.class_samples.tolist() + self.class_correct.tolist(),
            dtype=torch.int64,
            device=device,
        )
        loss = torch.tensor([self.loss_sum], dtype=torch.float64, device=device)
        dist.all_reduce(packed)
        dist.all_reduce(loss)
        packed = packed.cpu().numpy()
        self.correct_top1, self.correct_topk, self.real_samples, self.real_correct, keyed_ranks = map(
            int, packed[:5]
        )
        self.class_samples = packed[5 : 5 + self.num_classes].copy()
        self.class_correct = packed[5 + self.num_classes :].copy()
        self.loss_sum = float(loss.item())
        self.reduced = True
        if keyed_ranks:
            self._check_disjoint_keys()

    def _check_disjoint_keys(self) -> None:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(self.keys))
        total = sum(len(keys) for keys in gathered)
        distinct = len(set().union(*gathered))
        if total != distinct:
            raise ValueError(
                f"{total - distinct} sample(s) were evaluated on more than one rank (a padding sampler?); "
                "exact evaluation needs each sample exactly once"
            )
        if total != self.num_samples:
            raise ValueError(
                f"keys were given for {total} of {self.num_samples} samples; give them on every rank"
            )
        self.keys = set().union(*gathered)

    def result(self) -> dict:
        """The metrics as a JSON-ready dict; ``per_class_accuracy`` holds None for classes with no samples."""
        n = self.num_samples
        if n == 0:
            raise ValueError("no samples were evaluated")
        per_class = [
            int(c) / int(s) if s else None
            for c, s in zip(self.class_correct, self.class_samples, strict=True)
        ]
        metrics = {
            "num_samples": n,
            "top1": self.correct_top1 / n,
            "top5": self.correct_topk / n,
            "loss": self.loss_sum / n,
            "per_class_accuracy": per_class,
        }
        if self.real_labels is not None:
            metrics["real_num_samples"] = self.real_samples
            metrics["real_top1"] = self.real_correct / self.real_samples if self.real_samples else None
        return metrics


def load_real_labels(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, list[int]]:
    """ImageNet-ReaL labels from ``real.json``, keyed by validation file name or by the given ``keys``.

    Without ``keys`` the result maps ``ILSVRC2012_val_%08d.JPEG`` (1-based) to its label list. With
    ``keys`` (e.g. the data's sample keys) each key must contain ``ILSVRC2012_val_<8 digits>``, whose
    number selects the entry; the result maps each key to it.
    """
    with open(path) as f:
        table = json.load(f)
    if not isinstance(table, list) or not all(isinstance(v, list) for v in table):
        raise ValueError(f"{path} is not a ReaL label file: expected a JSON list of label lists")
    if keys is None:
        return {REAL_FILE_NAME.format(i + 1): labels for i, labels in enumerate(table)}
    result = {}
    for key in keys:
        match = REAL_KEY_NUMBER.search(key)
        if match is None:
            raise ValueError(
                f"sample key {key!r} does not name an ImageNet validation image (ILSVRC2012_val_########)"
            )
        number = int(match.group(1))
        if not 1 <= number <= len(table):
            raise ValueError(f"sample key {key!r}: image {number} is outside {path}'s 1..{len(table)}")
        result[key] = table[number - 1]
    return result


def write_metrics(path: str | Path, metrics: Mapping) -> None:
    """Write ``metrics`` as indented JSON atomically and durably (temporary file, fsync, rename)."""
    atomic_write_json(path, metrics)
