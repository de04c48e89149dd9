"""The few-shot evaluator: the paper's linear n-shot accuracy of frozen pre-logit features (fewshot_lsr.py), at scale.

The shots are chosen by sample key before any image is decoded: the keys and labels of the `train` pool come from its
shards' indices (pretrain/data/shard_index.py), in key order; per seed each class's samples are shuffled with
numpy.random.default_rng(seed) and the first n form the n-shot set (fewshot_lsr.fewshot_indices), so the sets depend
neither on `data.workers` nor on the world size. Only the union of the shot sets is read and forwarded (at most
max(shots) x classes x seeds samples, not the pool), in lockstep over ranks (ZeRO-3-safe); their features are
gathered to rank 0, which fits every probe and broadcasts the probes; each rank then scores its share of `val` batch
by batch and the correct counts are summed over ranks. Memory: the shot sets' features on rank 0 and the probes,
whatever the size of the pool or of `val`. A pool sample whose label is usable in the index but whose image turns
out corrupt cannot be a shot: it is a one-line error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pretrain.cluster.distributed import DistEnv, several_ranks
from pretrain.config import PretrainConfig
from pretrain.config.schema import EvalSpec
from pretrain.data import Manifest, load_manifest
from pretrain.data.shard_index import NO_LABEL, shard_index, usable_label
from pretrain.data.subset import apply_selections
from pretrain.evaluators.classification import spec_loader
from pretrain.evaluators.fewshot_lsr import FewShotError, LinearProbe, check_counts, fewshot_indices, fit_lsr
from pretrain.evaluators.forward import forward_batches, pre_logits


@dataclass(frozen=True)
class ShotPlan:
    """The shot sets of a pool: per (seed, shots), the keys of the set in fewshot_indices' order; `labels`: the class
    of each key a set uses; `selections`: per shard, the sorted in-shard indices of those samples."""

    sets: dict[tuple[int, int], list[str]]
    labels: dict[str, int]
    selections: tuple[tuple[int, ...], ...]

    @property
    def num_samples(self) -> int:
        return sum(map(len, self.selections))


def plan_shots(manifest: Manifest, num_classes: int, shots: Iterable[int], seeds: Iterable[int]) -> ShotPlan:
    """The shot sets of `manifest`'s samples with a usable label, from the shards' indices (no shard is read)."""
    pool = sorted(
        (key, usable_label(label, num_classes), s, i)
        for s, shard in enumerate(manifest.shards)
        for i, (key, label) in enumerate(zip(shard_index(shard).keys, shard_index(shard).labels, strict=True))
    )
    pool = [p for p in pool if p[1] != NO_LABEL]
    if not pool:
        raise FewShotError(f"no sample of {manifest.path} has a usable label: no few-shot pool")
    duplicate = next((a[0] for a, b in zip(pool, pool[1:], strict=False) if a[0] == b[0]), None)
    if duplicate is not None:
        raise FewShotError(f"the key {duplicate} occurs twice in {manifest.path}: shots are chosen by key")
    labels = np.array([p[1] for p in pool])
    shots, seeds = tuple(shots), tuple(seeds)
    check_counts(labels, num_classes, shots)
    sets = {(seed, n): [pool[j][0] for j in fewshot_indices(labels, num_classes, n, seed)]
            for seed in seeds for n in shots}
    used = {j for seed in seeds for j in fewshot_indices(labels, num_classes, max(shots), seed)}
    kept: list[list[int]] = [[] for _ in manifest.shards]
    for j in used:
        kept[pool[j][2]].append(pool[j][3])
    return ShotPlan(sets, {pool[j][0]: pool[j][1] for j in used}, tuple(tuple(sorted(k)) for k in kept))


class FewshotEvaluator:
    """n-shot linear-probe accuracy per `spec.shots`, averaged over `spec.seeds`."""

    def __init__(self, name: str, spec: EvalSpec, cfg: PretrainConfig, env: DistEnv) -> None:
        self.name, self.spec, self.cfg, self.env = name, spec, cfg, env
        pool = load_manifest(spec.train)
        self.val_manifest, self.val_loader = spec_loader(spec, spec.val, cfg, env)
        self.num_classes = max(pool.num_classes, self.val_manifest.num_classes)
        self.plan = plan_shots(pool, self.num_classes, spec.shots, spec.seeds)
        shots = apply_selections(pool, self.plan.selections, "fewshot")
        self.train_manifest, self.train_loader = spec_loader(spec, spec.train, cfg, env, manifest=shots)

    def _forward(self, model: nn.Module, loader, preprocess) -> Iterable[dict[str, Any]]:
        """(batch, features as a float32 numpy array) of this rank's batches, in lockstep with the other ranks."""
        for batch, feats in forward_batches(model, loader, preprocess, pre_logits, self.env.device,
                                            self.cfg.model.img_size):
            yield batch, feats.cpu().numpy()

    def _probes(self, model: nn.Module, preprocess) -> list[LinearProbe]:
        """Every (seed, shots) probe, fitted on rank 0 from the shot sets' features and sent to every rank."""
        mine = {key: f for batch, feats in self._forward(model, self.train_loader, preprocess)
                for key, f in zip(batch["key"], feats, strict=True)}
        parts = [mine]
        if several_ranks():
            parts = [None] * dist.get_world_size() if self.env.rank == 0 else None
            dist.gather_object(mine, parts, dst=0)
        out: list[Any] = [None]
        if self.env.rank == 0:
            out = [self._fit({k: f for part in parts for k, f in part.items()})]
        if several_ranks():
            dist.broadcast_object_list(out, src=0)
        if isinstance(out[0], str):
            raise FewShotError(out[0])
        return out[0]

    def _fit(self, features: dict[str, np.ndarray]) -> list[LinearProbe] | str:
        """The probes, or why they cannot be fitted (a shot whose image could not be read)."""
        probes = []
        for keys in self.plan.sets.values():
            missing = next((k for k in keys if k not in features), None)
            if missing is not None:
                return (f"the few-shot sample {missing} of {self.spec.train} could not be decoded: check the shards "
                        f"with `python -m data_prep verify --decode`")
            labels = np.array([self.plan.labels[k] for k in keys])
            probes.append(fit_lsr(np.stack([features[k] for k in keys]), labels, self.num_classes,
                                  self.spec.l2_reg))
        return probes

    def __call__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        probes = self._probes(model, preprocess)
        correct = np.zeros(len(probes), dtype=np.int64)
        total = 0
        for batch, feats in self._forward(model, self.val_loader, preprocess):
            labels = batch["label"].numpy()
            correct += [int(np.sum(p.predict(feats) == labels)) for p in probes]
            total += len(labels)
        counts = torch.tensor([*correct.tolist(), total], dtype=torch.int64, device=self.env.device)
        if several_ranks():
            dist.all_reduce(counts)
        counts = counts.cpu().tolist()
        if counts[-1] == 0:
            raise FewShotError(f"the few-shot val set {self.spec.val} yielded no samples")
        accs: dict[int, list[float]] = {n: [] for n in self.spec.shots}
        for (_, n), c in zip(self.plan.sets, counts[:-1], strict=True):
            accs[n].append(c / counts[-1])
        return {f"{n}shot": {"mean": float(np.mean(a)), "std": float(np.std(a)), "per_seed": a}
                for n, a in accs.items()}
