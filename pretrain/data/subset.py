"""Deterministic per-class subsets of a training set (the data-efficiency runs: 3 %, 10 %, ... of ImageNet).

Class c with n_c labelled samples keeps k_c = max(1, round_half_up(fraction x n_c)) of them: those whose key has
the smallest blake2b hash of (seed, key). The subset is therefore a function of (keys, labels, fraction, seed)
only: not of how the samples are sharded, nor of the worker count; and with one seed, a larger fraction keeps a
superset of a smaller one (each class keeps a longer prefix of one fixed ranking). Samples without a usable
label (no `.cls`, not an integer, out of range) are never kept: the loader would skip them anyway.

Labels come from `scan_labels`, which reads the shards' indices (`SHARD.tar.idx`, shard_index.py): keys and labels
without opening a shard. `subset_manifest` runs it once, on rank 0, and caches the selection as JSON beside the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fileio.atomic import atomic_write_text
from pretrain.cluster.distributed import gather

from .manifest import DataError, Manifest, Shard
from .shard_index import NO_LABEL, shard_index, usable_label

log = logging.getLogger(__name__)

CACHE_VERSION = 1

Labels = list[list[tuple[str, int]]]  # per shard, in shard order: (key, class index or NO_LABEL)
Selections = tuple[tuple[int, ...], ...]  # per shard: the sorted in-shard indices kept


def scan_labels(manifest: Manifest, threads: int = 8) -> Labels:
    """(key, class) of every sample of every shard, from the shards' indices (no shard is read)."""
    def labels(shard: Shard) -> list[tuple[str, int]]:
        index = shard_index(shard)
        return [(key, usable_label(label, manifest.num_classes)) for key, label in zip(index.keys, index.labels,
                                                                                       strict=True)]

    with ThreadPoolExecutor(max(1, min(threads, len(manifest.shards)))) as pool:
        return list(pool.map(labels, manifest.shards))


def kept_per_class(n: int, fraction: float) -> int:
    """k = max(1, fraction x n rounded half up) for a class of n >= 1 samples."""
    return max(1, math.floor(fraction * n + 0.5))


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(struct.pack("<Q", seed) + key.encode("utf-8"), digest_size=8).digest()


def select_subset(labels: Labels, fraction: float, seed: int) -> Selections:
    """Per shard, the sorted in-shard indices kept: per class, the k_c samples of smallest hash(seed, key)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[tuple[bytes, str, int, int]]] = {}
    for s, shard in enumerate(labels):
        for i, (key, label) in enumerate(shard):
            if label != NO_LABEL:
                by_class.setdefault(label, []).append((_rank(seed, key), key, s, i))
    kept: list[list[int]] = [[] for _ in labels]
    for members in by_class.values():
        members.sort()
        for _, _, s, i in members[: kept_per_class(len(members), fraction)]:
            kept[s].append(i)
    return tuple(tuple(sorted(k)) for k in kept)


def subset_name(fraction: float, seed: int, selections: Selections) -> str:
    """`<fraction>/seed<seed>/<digest of the selections>`: what a data state records of the subset."""
    digest = hashlib.blake2b(json.dumps(selections, separators=(",", ":")).encode(), digest_size=6).hexdigest()
    return f"{fraction:g}/seed{seed}/{digest}"


def apply_selections(manifest: Manifest, selections: Selections, name: str) -> Manifest:
    """`manifest` reading only the selected samples (shards with none kept stay, with size 0)."""
    if len(selections) != len(manifest.shards):
        raise DataError(f"a subset of {len(selections)} shards does not fit {manifest.path} ({len(manifest.shards)})")
    return dataclasses.replace(
        manifest, num_samples=sum(map(len, selections)), selections=selections, subset=name
    )


def _source(manifest: Manifest) -> dict:
    return {"path": manifest.path, "shards": [[s.name, s.num_samples, s.bytes, s.sha256] for s in manifest.shards]}


def cache_path(cache_dir: str | Path, fraction: float, seed: int) -> Path:
    """Where `subset_manifest` keeps the selection of (fraction, seed)."""
    return Path(cache_dir) / f"subset-{fraction:g}-seed{seed}.json"


def _read_cache(path: Path, manifest: Manifest, fraction: float, seed: int) -> dict | None:
    """The cached selection if it exists and was made from this manifest with this fraction and seed."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    expected = {"version": CACHE_VERSION, "fraction": fraction, "seed": seed, "source": _source(manifest)}
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in expected.items()):
        return None
    return doc


def _build_cache(path: Path, manifest: Manifest, fraction: float, seed: int, threads: int) -> None:
    labels = scan_labels(manifest, threads)
    if all(label == NO_LABEL for shard in labels for _, label in shard):
        raise DataError(f"no sample of {manifest.path} has a usable label (`.cls` member), nothing to subset")
    selections = select_subset(labels, fraction, seed)
    per_class = Counter(labels[s][i][1] for s, sel in enumerate(selections) for i in sel)
    doc = {
        "version": CACHE_VERSION,
        "fraction": fraction,
        "seed": seed,
        "source": _source(manifest),
        "name": subset_name(fraction, seed, selections),
        "kept_per_class": [per_class.get(c, 0) for c in range(manifest.num_classes)],
        "selections": selections,
    }
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))


def subset_manifest(
    manifest: Manifest, fraction: float, seed: int, cache_dir: str | Path, rank: int, threads: int = 8
) -> Manifest:
    """`manifest` subsetted to `fraction` of each class (itself when fraction is 1); collective over ranks.

    Rank 0 scans the shards unless `cache_dir` holds this selection already, and writes it there; every rank
    then reads it (so `cache_dir` must be on a filesystem all nodes share). Errors reach every rank.
    """
    if fraction >= 1.0:
        return manifest
    path = cache_path(cache_dir, fraction, seed)
    error = None
    if rank == 0 and _read_cache(path, manifest, fraction, seed) is None:
        log.info("scanning %d shards for the labels of a %g subset (seed %d)", len(manifest.shards), fraction, seed)
        try:
            _build_cache(path, manifest, fraction, seed, threads)
        except (DataError, OSError) as exc:
            error = str(exc) if isinstance(exc, DataError) else f"cannot write the subset cache {path}: {exc}"
    errors = gather(error)  # also the barrier: the cache is complete once every rank gets here
    if errors[0] is not None:
        raise DataError(errors[0])
    doc = _read_cache(path, manifest, fraction, seed)
    if doc is None:
        raise DataError(f"rank {rank} cannot read the subset cache {path}: the run folder must be shared by all nodes")
    subset = apply_selections(manifest, tuple(tuple(sel) for sel in doc["selections"]), doc["name"])
    if rank == 0:
        kept = [k for k in doc["kept_per_class"] if k > 0]
        log.info(
            "data subset %s: %d of %d samples, %d to %d per class over %d classes (%s)",
            subset.subset, subset.num_samples, manifest.num_samples, min(kept), max(kept), len(kept), path,
        )
    return subset

